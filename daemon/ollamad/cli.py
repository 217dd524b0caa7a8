"""The `ollamad` command line (work in progress: only `stand-in` is wired)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "stand-in":
        from ollamad.testing.standin import main as standin_main
        return standin_main(argv[1:])
    print("usage: ollamad {serve,status,health,metrics,gpu,generate,restart,stand-in} ...",
          file=sys.stderr)
    return 2
