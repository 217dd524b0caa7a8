"""A stand-in for `ollama serve`: Ollama's HTTP API and process shape, without a GPU.

Entry point: `main(argv)`, run as `ollamad stand-in [flags]` (see
`ollamad stand-in --help`). Modules, each doing one thing:

- `server`: start-up, signals, shutdown;  `config`: flags and environment
- `httpserver`: HTTP/1.1 plumbing;  `api`: routing and simple endpoints
- `generation`: generate/chat/embed;  `turn`: one request and its planned
  answer;  `textgen`: the deterministic text;  `tools`: tool calls
- `openai`, `openai_requests`: the `/v1/` endpoints over the native ones
- `scheduler`: queue and parallel slots;  `runners`: loaded models, reloads,
  eviction;  `runnerprocess`: one runner as the server sees it (`runner` is
  the child program, which makes the tokens);  `runneroptions`: what makes a
  runner;  `memory`: pretend VRAM and KV cache;  `catalog`: installed models
- `faults`, `control`, `stats`: fault injection and the `/_standin/` endpoint
- `apitypes`, `gojson`, `gotime`, `log`: Ollama's types, Go's formats, logging
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from ollamad.testing.standin.server import main as serve

    return serve(argv)
