"""Talking to Ollama: model names, runner options and model loads (the HTTP backend and its
retry policy live beside, in :mod:`ollamad.backend` and :mod:`ollamad.retry`)."""
