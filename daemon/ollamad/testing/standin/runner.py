"""A pretend model runner: the child process that holds one loaded model and makes its tokens.

Like Ollama's llama-server it is a separate process on a localhost port of
its own, and the server only proxies what it produces: a runner that is
stopped (SIGSTOP) stalls every generation it serves while the server still
answers `/`, and one that is killed ends them with an error. It stays in the
server's process group with no parent-death signal, so a server killed with
SIGKILL leaves it running (orphaned) until someone kills it. Deviation from
Ollama, as a safety net for test suites: it exits by itself after
`--max-lifetime` seconds.

Protocol (one TCP connection per request, JSON lines): the server sends
`{"prompt_seconds": S, "token_seconds": T, "pieces": [...]}`; the runner
answers `{"prompt_done": true}` once the prompt is evaluated, then
`{"piece": P}` per token, each T seconds after the last, then
`{"done": true}`. Start-up: after `--load-time` seconds (the load) it writes
`ready PORT` on stdout, the server's pipe.

Kept free of imports beyond the standard library: it runs without site and
starts fast, and every load waits for it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time


def _complete(connection: socket.socket):
    with connection, connection.makefile("rb") as incoming:
        try:
            request = json.loads(incoming.readline())
            time.sleep(request["prompt_seconds"])
            connection.sendall(b'{"prompt_done":true}\n')
            evaluated = time.monotonic()
            delay = request["token_seconds"]
            for index, piece in enumerate(request["pieces"], start=1):
                if delay:
                    time.sleep(max(0.0, evaluated + index * delay - time.monotonic()))
                connection.sendall(json.dumps({"piece": piece}).encode() + b"\n")
            connection.sendall(b'{"done":true}\n')
        except (OSError, ValueError, KeyError):
            pass  # the server went away (client disconnect) or sent nonsense: drop it


def _serve(listener: socket.socket):
    while True:
        connection, _ = listener.accept()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_complete, args=(connection,), daemon=True).start()


def main(argv: list[str]) -> int:
    options = dict(zip(argv[::2], argv[1::2]))
    # Die of SIGINT like a Go program (a terminal's Ctrl-C reaches the whole group).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    listener = socket.create_server(("127.0.0.1", 0))
    time.sleep(float(options.get("--load-time", "0")))
    try:
        os.write(1, f"ready {listener.getsockname()[1]}\n".encode())
    except OSError:
        pass  # the server is gone; keep holding the "VRAM" like an orphaned runner does
    threading.Thread(target=_serve, args=(listener,), daemon=True).start()
    time.sleep(float(options.get("--max-lifetime", "1800")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
