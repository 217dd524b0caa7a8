"""A stand-in for `ollama serve`: Ollama's HTTP API and process shape, without a GPU.

Entry point: `main(argv)`, run as `ollamad stand-in [flags]` (see
`ollamad stand-in --help`). Modules, each doing one thing:

- `server`: start-up, signals, shutdown;  `config`: flags and environment
- `httpserver`: HTTP/1.1 plumbing;  `api`: routing and simple endpoints
- `generation`: generate/chat/embed;  `textgen`: the deterministic answers
- `scheduler`: queue and parallel slots;  `runners`: runner processes
  (`runner` is the child program);  `catalog`: the installed models
- `faults`, `control`, `stats`: fault injection and the `/_standin/` endpoint
- `apitypes`, `gojson`, `gotime`: Ollama's types and Go's formats
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from ollamad.testing.standin.server import main as serve

    return serve(argv)
