"""Human-readable tables for the operator commands (``--json`` bypasses this).

Times read as people read them (``2026-12-02 04:50:01 UTC (3 min ago)``,
``up 2 h 5 min``), loaded models as ``ollama ps`` shows them (``UNTIL``, and
``PROCESSOR`` as ``100% GPU`` or ``48%/52% CPU/GPU``), and every state that
needs an operator says what to run.
"""

from __future__ import annotations

import datetime
import math
import re
import time
from typing import Any, Iterable, Mapping, Sequence

#: Expiry years from here on are Ollama's "for ever" (keep_alive -1).
FOREVER_YEAR = 2200


def duration(seconds: Any) -> str:
    """``29 s``, ``3 min 5 s``, ``2 h 4 min``, ``3 d 2 h``."""
    if not isinstance(seconds, (int, float)):
        return "-"
    whole = int(seconds)
    for size, unit, smaller, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "min"),
                                            (60, "min", 1, "s")):
        if whole >= size:
            rest = (whole % size) // smaller
            return f"{whole // size} {unit}" + (f" {rest} {small_unit}" if rest else "")
    return f"{seconds:.1f} s" if seconds < 10 else f"{whole} s"


def moment(wall: Any, now: float | None = None) -> str:
    """A wall-clock time: ISO in UTC, and how long ago (or from now)."""
    if not isinstance(wall, (int, float)):
        return "-"
    now = time.time() if now is None else now
    stamp = datetime.datetime.fromtimestamp(wall, datetime.timezone.utc)
    delta = now - wall
    relative = f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"
    return f"{stamp:%Y-%m-%d %H:%M:%S} UTC ({relative})"


def until(expires_at: Any, now: float | None = None) -> str:
    """``ollama ps``'s UNTIL: when a loaded model is unloaded (``forever``, ``in 29 min``)."""
    if not isinstance(expires_at, str) or not expires_at:
        return "-"
    # Go writes nanoseconds; Python reads at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", expires_at.replace("Z", "+00:00"))
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return expires_at
    if when.year >= FOREVER_YEAR:
        return "forever"
    left = when.timestamp() - (time.time() if now is None else now)
    return f"in {duration(left)}" if left > 0 else "now"


def processor(model: Mapping[str, Any]) -> str:
    """``ollama ps``'s PROCESSOR: ``100% GPU``, ``100% CPU`` or ``48%/52% CPU/GPU``."""
    share = model.get("gpu_share")
    if share is None:
        return "-"
    gpu = round(100 * share)
    if gpu >= 100:
        return "100% GPU"
    if gpu <= 0:
        return "100% CPU"
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pairs(pairs: Iterable[tuple[str, Any]]) -> str:
    pairs = list(pairs)
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in pairs)


def error_line(exc: Any) -> str:
    return f"ollamad: {exc.code.value if hasattr(exc.code, 'value') else exc.code}: {exc.message}"


def gpu(snapshot: Mapping[str, Any]) -> str:
    if not snapshot.get("available"):
        return f"No GPU: {snapshot.get('reason') or 'unknown reason'}"
    rows = [(g.get("index"), g.get("name"), f"{_size(g.get('memory_used'))} / {_size(g.get('memory_total'))}",
             _size(g.get("ollama_memory")), _size(g.get("other_memory")),
             g.get("utilization_gpu"), g.get("temperature_c"), g.get("power_draw_w"))
            for g in snapshot.get("gpus", [])]
    text = _table(("GPU", "NAME", "MEMORY USED", "OLLAMA", "OTHER", "UTIL %", "TEMP C", "POWER W"), rows)
    xid = snapshot.get("xid_errors") or {}
    if xid.get("count"):
        text += f"\nXID errors: {xid['count']} (last: {xid.get('last')})"
    return text


def _gpu_summary(summary: Mapping[str, Any]) -> str:
    if not summary.get("available"):
        return f"no GPU ({summary.get('reason') or 'unknown'})"
    parts = [f"GPU {g.get('index')}: {_size(g.get('memory_used'))}/{_size(g.get('memory_total'))}"
             for g in summary.get("gpus", [])]
    return ", ".join(parts) + f"; Ollama holds {_size(summary.get('ollama_vram_bytes'))}"


def health(result: Mapping[str, Any]) -> str:
    starting = (result.get("ollama") or {}).get("starting")
    lines = ["STARTING (Ollama is starting; requests wait for it)" if starting
             else f"{result.get('status', 'unknown').upper()}"]
    lines += [f"  - {reason}" for reason in result.get("reasons", [])]
    ollama = result.get("ollama") or {}
    where = ", ".join(part for part in (
        f"pid {ollama['pid']}" if ollama.get("pid") else None, ollama.get("url"),
        f"{ollama.get('restarts')} restarts" if ollama.get("restarts") is not None else None)
        if part)
    lines.append(f"Ollama: {ollama.get('state')}" + (f" ({where})" if where else ""))
    if ollama.get("state") == "FATAL":
        lines.append("  Ollama gave up after repeated failures. Fix the cause (the reason "
                     "above, `journalctl -u ollamad`), then run `ollamad restart` as root or a "
                     "member of admin_group.")
    lines.append(f"GPU: {_gpu_summary(result.get('gpu') or {})}")
    return "\n".join(lines)


def status(result: Mapping[str, Any]) -> str:
    daemon = result.get("daemon") or {}
    ollama = result.get("ollama") or {}
    last_exit = ollama.get("last_exit") or {}
    process = ollama.get("process") or {}
    exit_text = None
    if last_exit:
        how = ", ".join(f"{k} {v}" for k, v in last_exit.items() if k != "at")
        exit_text = f"{how}, {moment(last_exit.get('at'))}" if last_exit.get("at") else how
    text = _pairs([
        ("ollamad", f"{daemon.get('state')} (pid {daemon.get('pid')}, version "
                    f"{daemon.get('version')}, up {duration(daemon.get('uptime_s'))})"),
        ("socket", daemon.get("socket")),
        ("workers", f"{daemon.get('busy_workers')}/{daemon.get('workers')} busy, queue "
                    f"{daemon.get('queue_depth')}/{daemon.get('queue_capacity')}"),
        ("health", (result.get("health") or {}).get("status")),
        ("ollama", f"{ollama.get('state')} ({ollama.get('mode')} mode"
                   + (f", version {ollama['version']}" if ollama.get("version") else "") + ")"
                   + ("; run `ollamad restart` once the cause is fixed"
                      if ollama.get("state") == "FATAL" else "")),
        ("ollama pid", ollama.get("pid")),
        ("ollama url", ollama.get("url")),
        ("ollama up", duration(ollama.get("uptime_s")) if ollama.get("uptime_s") is not None
         else None),
        ("restarts", ollama.get("restarts")),
        ("last exit", exit_text),
        ("last reason", ollama.get("last_reason")),
        ("fatal", ollama.get("fatal_reason")),
        ("process", f"{_size(process.get('rss_bytes'))} RSS, {process.get('cpu_percent')} % CPU, "
                    f"{process.get('threads')} threads" if process else None),
        ("runners", ", ".join(f"pid {r.get('pid')} ({_size(r.get('rss_bytes'))})"
                              for r in process.get("runners") or []) or "none" if process else None),
        ("gpu", _gpu_summary(result.get("gpu") or {})),
    ])
    models = ollama.get("models") or []
    if models:
        text += "\n\n" + _loaded(models)
    scheduling = result.get("scheduling")
    if scheduling:
        text += "\n\n" + _sharing(scheduling.get("lanes") or {}, scheduling.get("tenants") or [])
    return text


def _loaded(models: Sequence[Mapping[str, Any]]) -> str:
    return _table(("LOADED MODEL", "SIZE", "VRAM", "PROCESSOR", "CONTEXT", "UNTIL"),
                  [(m.get("name"), _size(m.get("size")), _size(m.get("size_vram")), processor(m),
                    m.get("context_length"), until(m.get("expires_at"))) for m in models])


def _wait(figures: Mapping[str, Any]) -> str:
    wait = figures.get("queue_wait") or {}
    return f"{wait.get('p50', 0):.3f}/{wait.get('p95', 0):.3f}/{wait.get('p99', 0):.3f}"


def _sharing(lanes: Mapping[str, Any], tenants: Sequence[Mapping[str, Any]]) -> str:
    """The lanes, then the tenants (busiest first): who holds the GPU, who waits for it."""
    columns = ("QUEUED", "IN FLIGHT", "REQUESTS", "FAILED", "TOKENS", "WAIT p50/p95/p99 s")

    def row(name: Any, f: Mapping[str, Any]) -> tuple[Any, ...]:
        return (name, f.get("queued"), f.get("in_flight"), f.get("requests"),
                f.get("failed_requests"), f.get("completion_tokens"), _wait(f))
    text = _table(("LANE", *columns), [row(lane, f) for lane, f in lanes.items()])
    if tenants:
        text += "\n\n" + _table(("TENANT", *columns), [row(t.get("tenant"), t) for t in tenants])
    return text


def metrics(result: Mapping[str, Any]) -> str:
    latency = result.get("latency") or {}
    text = _pairs([
        ("requests", f"{result.get('total_requests')} total, {result.get('successful_requests')} ok, "
                     f"{result.get('failed_requests')} failed"),
        ("success rate", f"{100 * (result.get('success_rate') or 0):.1f} %"),
        ("avg response", f"{result.get('average_response_time', 0):.3f} s"),
        ("latency", f"p50 {latency.get('p50', 0):.3f} s, p95 {latency.get('p95', 0):.3f} s, "
                    f"p99 {latency.get('p99', 0):.3f} s"),
        ("tokens/s", result.get("tokens_per_second")),
        ("retried", f"{result.get('retried_requests', 0)} requests needed more than one attempt"),
        ("busy", f"{result.get('rejected_busy', 0)} refused (a queue full)"),
        ("errors", ", ".join(f"{code} {n}" for code, n in sorted(
            (result.get("errors") or {}).items())) or "none"),
        ("queue depth", result.get("queue_depth")),
        ("in flight", result.get("in_flight")),
        ("dropped msgs", result.get("dropped_messages")),
        ("ollama restarts", result.get("ollama_restarts")),
        ("up", duration(result.get("uptime_s"))),
    ])
    ops = result.get("ops") or {}
    if ops:
        text += "\n\n" + _table(("OP", "COUNT", "ERRORS"),
                                [(op, c.get("count"), c.get("errors")) for op, c in ops.items()])
    if result.get("lanes"):
        text += "\n\n" + _sharing(result["lanes"], result.get("tenants") or [])
    return text


def models(result: Mapping[str, Any]) -> str:
    loaded = {m.get("name"): m for m in result.get("loaded", [])}
    rows = []
    for m in result.get("models", []):
        ps = loaded.get(m.get("name"))
        if ps is not None:   # /api/ps items: size and size_vram give the split
            size, vram = ps.get("size") or 0, ps.get("size_vram") or 0
            where = processor({"gpu_share": vram / size if size else None})
        rows.append((m.get("name"), _size(m.get("size")),
                     (m.get("details") or {}).get("parameter_size"),
                     where if ps is not None else "no",
                     until(ps.get("expires_at")) if ps is not None else "-"))
    return _table(("MODEL", "SIZE", "PARAMS", "LOADED", "UNTIL"), rows)


class PullProgress:
    """``ollamad pull``'s view of Ollama's progress objects.

    A status of its own (``pulling manifest``, ``verifying sha256 digest``,
    ``success``) is a line when it changes. A layer's progress (``pulling
    c1a43ad63810``, with ``total`` and ``completed``) is one line rewritten in
    place on a terminal (at most :attr:`REDRAW` times a second), and
    elsewhere (a log, a pipe) a line at most every :attr:`EVERY` seconds per
    layer, plus its last one: Ollama sends one every 60 ms per layer, which
    no reader wants.
    """

    REDRAW = 10
    EVERY = 1.0

    def __init__(self, out: Any, *, terminal: bool, clock=time.monotonic):
        self._out = out
        self._terminal = terminal
        self._clock = clock
        self._status: str | None = None
        self._shown_at: dict[str, float] = {}
        self._partial = False   # a terminal line being rewritten in place

    def show(self, progress: Mapping[str, Any]) -> None:
        status = str(progress.get("status", ""))
        total, completed = progress.get("total"), progress.get("completed")
        changed = status != self._status
        self._status = status
        if changed:
            self.end()   # a layer's line in place stays as it last was
        if not isinstance(total, int) or not total:
            if changed:
                self._line(status)
            return
        done = isinstance(completed, int) and completed >= total
        now = self._clock()
        every = 1 / self.REDRAW if self._terminal else self.EVERY
        if not (changed or done or now - self._shown_at.get(status, 0.0) >= every):
            return
        if done and self._shown_at.get(status) == math.inf:
            return   # its last line is out already
        self._shown_at[status] = math.inf if done else now
        text = f"{status}  {pull_share(completed, total)}"
        if self._terminal and not done:
            self._out.write(f"\r{text}\x1b[K")
            self._out.flush()
            self._partial = True
        else:
            self._line(text)

    def end(self) -> None:
        """Finish a line left open in place (before an error message, or at the end)."""
        if self._partial:
            self._out.write("\n")
            self._out.flush()
            self._partial = False

    def _line(self, text: str) -> None:
        # Over the same layer's line in place, if one is open.
        self._out.write(f"\r{text}\x1b[K\n" if self._partial else f"{text}\n")
        self._out.flush()
        self._partial = False


def pull_share(completed: Any, total: Any) -> str:
    """``45% of 64.0 MiB (28.8 MiB)``: how much of a layer has come."""
    completed = completed if isinstance(completed, int) else 0
    percent = int(100 * completed / total) if total else 100
    return f"{percent:3d}% of {_size(total)} ({_size(completed)})"
