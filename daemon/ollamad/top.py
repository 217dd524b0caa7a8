"""``ollamad top``: a live view of the daemon for a terminal, refreshed in place.

Each refresh asks for ``status`` and ``metrics`` and redraws the whole
screen: Ollama's state, the workers and queue, tokens per second since the
last refresh, GPU memory, the lanes, the busiest tenants and the loaded
models. ``q`` quits (the terminal is put in cbreak mode for it, and
restored); so does Ctrl-C. When the daemon does not answer, the screen says
so and the next refresh tries again.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from typing import Any, Iterator, TextIO

from ollamad import render

CLEAR = "\x1b[H\x1b[2J"
#: Tenants shown (the busiest first).
TENANTS_SHOWN = 8


def screen(status: dict[str, Any], metrics: dict[str, Any], tokens_per_second: float | None,
           now: float) -> str:
    daemon, ollama = status.get("daemon") or {}, status.get("ollama") or {}
    head = (f"ollamad top  {time.strftime('%H:%M:%S', time.localtime(now))}  "
            f"(q quits)\n\n")
    rate = "-" if tokens_per_second is None else f"{tokens_per_second:.1f}"
    summary = render._pairs([
        ("ollama", f"{ollama.get('state')}, pid {ollama.get('pid')}, up "
                   f"{render.duration(ollama.get('uptime_s'))}, {ollama.get('restarts')} restarts"),
        ("workers", f"{daemon.get('busy_workers')}/{daemon.get('workers')} busy, "
                    f"{daemon.get('queue_depth')} queued"),
        ("tokens/s", f"{rate} now, {metrics.get('completion_tokens', 0)} generated in all"),
        ("requests", f"{metrics.get('total_requests', 0)} ({metrics.get('failed_requests', 0)} "
                     f"failed, {metrics.get('rejected_busy', 0)} busy)"),
        ("gpu", render._gpu_summary(status.get("gpu") or {})),
    ])
    scheduling = status.get("scheduling") or {}
    tenants = (metrics.get("tenants") or scheduling.get("tenants") or [])[:TENANTS_SHOWN]
    body = render._sharing(scheduling.get("lanes") or metrics.get("lanes") or {}, tenants)
    models = ollama.get("models") or []
    if models:
        body += "\n\n" + render._loaded(models)
    return head + summary + "\n\n" + body + "\n"


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[None]:
    """Single key presses from ``stream`` (cbreak mode) while inside; restored after."""
    try:
        import termios
        import tty
        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError, AttributeError):   # not a terminal
        yield
        return
    tty.setcbreak(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _pressed(stream: TextIO, timeout: float) -> str:
    """A key pressed within ``timeout`` seconds ("" for none, or at end of input)."""
    try:
        ready, _, _ = select.select([stream], [], [], timeout)
    except (OSError, ValueError):
        time.sleep(timeout)
        return ""
    if not ready:
        return ""
    key = os.read(stream.fileno(), 1).decode(errors="replace")
    return key or "q"    # end of input: nobody can press q any more


def run(client: Any, interval: float, out: TextIO = sys.stdout, keys: TextIO = sys.stdin) -> int:
    from ollamad_client import OllamadError

    last: tuple[float, int] | None = None
    with _keys(keys):
        while True:
            now = time.monotonic()
            try:
                status, metrics = client.status(), client.metrics()
                tokens = int(metrics.get("completion_tokens") or 0)
                rate = None if last is None else (tokens - last[1]) / max(now - last[0], 1e-6)
                last = (now, tokens)
                text = screen(status, metrics, rate, time.time())
            except OllamadError as exc:
                text = f"ollamad top  (q quits)\n\n{render.error_line(exc)}\n(trying again)\n"
            out.write(CLEAR + text)
            out.flush()
            try:
                if _pressed(keys, interval).lower() == "q":
                    return 0
            except KeyboardInterrupt:
                return 0
