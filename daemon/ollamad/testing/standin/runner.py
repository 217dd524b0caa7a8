"""A pretend model runner: the child process that "holds" one loaded model.

Like Ollama's `ollama runner`, it stays in the server's process group and has
no parent-death signal, so a server killed with SIGKILL leaves it running
(orphaned) until someone kills it. Deviation from Ollama, as a safety net for
test suites: it exits by itself after `--max-lifetime` seconds.

Kept free of imports from the rest of the package: it starts fast.
"""

from __future__ import annotations

import signal
import sys
import time


def main(argv: list[str]) -> int:
    options = dict(zip(argv[::2], argv[1::2]))
    # Die of SIGINT like a Go program (a terminal's Ctrl-C reaches the whole group).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    time.sleep(float(options.get("--max-lifetime", "1800")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
