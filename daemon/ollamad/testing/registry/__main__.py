"""``python -m ollamad.testing.registry``: run a test registry (see the package's docstring)."""

from __future__ import annotations

import argparse
import sys

from ollamad.testing.registry import content, server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ollamad.testing.registry",
        description="A tiny registry serving Ollama models over plain http (pull them with "
                    "insecure). Prints HOST:PORT on its first line of output, then one line "
                    "per request.")
    parser.add_argument("--listen", default="127.0.0.1:0",
                        help="HOST:PORT to listen on; port 0 takes a free one "
                             "(default 127.0.0.1:0)")
    parser.add_argument("--model", action="append", default=[], metavar="NS/MODEL:TAG[=BYTES]",
                        help="a model to serve, with the size of its weights layer "
                             f"(default {content.DEFAULT_WEIGHTS_BYTES}); repeatable; "
                             "default library/tiny:v1")
    parser.add_argument("--rate", type=int, default=0,
                        help="bytes per second blobs are sent at; 0: as fast as possible")
    ns = parser.parse_args(argv)
    host, colon, port = ns.listen.rpartition(":")
    if not colon or not port.isdigit() or ns.rate < 0:
        parser.error("--listen must be HOST:PORT and --rate not negative")
    try:
        models = [content.build(*content.parse_spec(spec))
                  for spec in ns.model or ["library/tiny:v1"]]
    except ValueError as exc:
        parser.error(str(exc))
    try:
        server.serve(host.strip("[]"), int(port), models, ns.rate)
    except OSError as exc:
        print(f"registry: cannot listen on {ns.listen}: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
