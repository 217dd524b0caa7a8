"""Go's time formats, as Ollama writes them.

- timestamps: `time.Time` in JSON is RFC3339 with up to nine fractional
  digits, trailing zeros dropped, `Z` for UTC;
- log lines print durations with `Duration.String()`.

Durations are parsed (`keep_alive`, `OLLAMA_KEEP_ALIVE`) by `ollamad.goduration`,
which the daemon uses too.
"""

from __future__ import annotations

import time

from ollamad.goduration import NS_PER_S

_second_cache: tuple[int, str] = (-1, "")


def _zone(offset_s: int) -> str:
    if offset_s == 0:
        return "Z"
    sign = "+" if offset_s > 0 else "-"
    hours, minutes = divmod(abs(offset_s) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def rfc3339_nano(wall_ns: int, *, local: bool = False) -> str:
    """`wall_ns` (ns since the epoch) as Go's JSON encoding of a time.Time."""
    seconds, fraction = divmod(wall_ns, NS_PER_S)
    parts = time.localtime(seconds) if local else time.gmtime(seconds)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", parts)
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + _zone(parts.tm_gmtoff if local else 0)


def utc_now() -> str:
    """`time.Now().UTC()` as JSON text; the whole-second part is cached (hot path)."""
    global _second_cache
    now = time.time_ns()
    seconds, fraction = divmod(now, NS_PER_S)
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    if fraction:
        return f"{prefix}.{fraction:09d}".rstrip("0") + "Z"
    return prefix + "Z"


def log_time() -> str:
    """The `time=` value of Go's slog text handler: local time, milliseconds."""
    now = time.time_ns()
    seconds, fraction = divmod(now, NS_PER_S)
    parts = time.localtime(seconds)
    millis = fraction // 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", parts) + f".{millis:03d}" + _zone(parts.tm_gmtoff)


def _trim_fraction(value: int, digits: int) -> str:
    whole, fraction = divmod(value, 10**digits)
    fraction_text = f"{fraction:0{digits}d}".rstrip("0")
    return f"{whole}.{fraction_text}" if fraction_text else str(whole)


def duration_string(ns: int) -> str:
    """Go's `time.Duration.String()` (as in `[GIN]` request log lines)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim_fraction(ns, 3)}\u00b5s"
    if ns < NS_PER_S:
        return f"{sign}{_trim_fraction(ns, 6)}ms"
    minutes, rest = divmod(ns, 60 * NS_PER_S)
    hours, minutes = divmod(minutes, 60)
    text = _trim_fraction(rest, 9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text
