"""Ollama-style log lines on stderr: slog text lines and `[GIN]` request lines.

Each line is one `os.write` to fd 2: no locks (safe from signal handlers and
any thread) and cheap enough to log every request, as Ollama does. Like a Go
program, the server dies of SIGPIPE at the first line it writes after its
stderr pipe lost its reader (a supervisor whose log thread died), whichever
thread writes it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time

from ollamad.testing.standin.gotime import duration_string, log_time


def _slog_value(value: object) -> str:
    text = str(value)
    if text and all(c.isprintable() and c not in ' ="' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _die_of_sigpipe():
    # Python ignores SIGPIPE, and only its main thread may call signal.signal(), while
    # most lines come from request threads: restore the default action in libc instead.
    ctypes.CDLL(None).signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)


def _write(line: str):
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except BrokenPipeError:
        _die_of_sigpipe()
    except OSError:
        pass


def event(level: str, source: str, msg: str, **attrs: object):
    """`time=... level=INFO source=routes.go:1310 msg="..." key=value`."""
    fields = "".join(f" {key}={_slog_value(value)}" for key, value in attrs.items())
    _write(f"time={log_time()} level={level} source={source} msg={_slog_value(msg)}{fields}\n")


def info(source: str, msg: str, **attrs: object):
    event("INFO", source, msg, **attrs)


def gin(status: int, latency_ns: int, client: str, method: str, path: str):
    """gin's request log line, e.g. `[GIN] 2024/12/06 - 10:00:00 | 200 | 1.2ms | ...`."""
    stamp = time.strftime("%Y/%m/%d - %H:%M:%S")
    _write(f"[GIN] {stamp} | {status:3d} | {duration_string(latency_ns):>13} | "
           f"{client:>15} | {method:<7} {json.dumps(path)}\n")
