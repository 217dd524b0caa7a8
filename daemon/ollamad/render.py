"""Human-readable tables for the operator commands (``--json`` bypasses this)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence


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
    lines = [f"{result.get('status', 'unknown').upper()}"]
    lines += [f"  - {reason}" for reason in result.get("reasons", [])]
    ollama = result.get("ollama") or {}
    lines.append(f"Ollama: {ollama.get('state')} (pid {ollama.get('pid')}, {ollama.get('url')}, "
                 f"{ollama.get('restarts')} restarts)")
    lines.append(f"GPU: {_gpu_summary(result.get('gpu') or {})}")
    return "\n".join(lines)


def status(result: Mapping[str, Any]) -> str:
    daemon = result.get("daemon") or {}
    ollama = result.get("ollama") or {}
    last_exit = ollama.get("last_exit") or {}
    process = ollama.get("process") or {}
    text = _pairs([
        ("ollamad", f"{daemon.get('state')} (pid {daemon.get('pid')}, version "
                    f"{daemon.get('version')}, up {daemon.get('uptime_s')} s)"),
        ("socket", daemon.get("socket")),
        ("workers", f"{daemon.get('busy_workers')}/{daemon.get('workers')} busy, queue "
                    f"{daemon.get('queue_depth')}/{daemon.get('queue_capacity')}"),
        ("health", (result.get("health") or {}).get("status")),
        ("ollama", f"{ollama.get('state')} ({ollama.get('mode')} mode)"),
        ("ollama pid", ollama.get("pid")),
        ("ollama url", ollama.get("url")),
        ("uptime", f"{ollama.get('uptime_s')} s" if ollama.get("uptime_s") is not None else None),
        ("restarts", ollama.get("restarts")),
        ("last exit", ", ".join(f"{k} {v}" for k, v in last_exit.items()) or None),
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
        text += "\n\n" + _table(("LOADED MODEL", "SIZE", "VRAM", "ON GPU"),
                                [(m.get("name"), _size(m.get("size")), _size(m.get("size_vram")),
                                  "yes" if m.get("on_gpu") else "no") for m in models])
    scheduling = result.get("scheduling")
    if scheduling:
        text += "\n\n" + _sharing(scheduling.get("lanes") or {}, scheduling.get("tenants") or [])
    return text


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
        ("queue depth", result.get("queue_depth")),
        ("in flight", result.get("in_flight")),
        ("dropped msgs", result.get("dropped_messages")),
        ("ollama restarts", result.get("ollama_restarts")),
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
    rows = [(m.get("name"), _size(m.get("size")), (m.get("details") or {}).get("parameter_size"),
             "yes" if m.get("name") in loaded else "no") for m in result.get("models", [])]
    return _table(("MODEL", "SIZE", "PARAMS", "LOADED"), rows)
