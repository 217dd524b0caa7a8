"""Go's time formats and durations, as Ollama writes and parses them.

- timestamps: `time.Time` in JSON is RFC3339 with up to nine fractional
  digits, trailing zeros dropped, `Z` for UTC;
- `keep_alive` strings and `OLLAMA_KEEP_ALIVE` go through `time.ParseDuration`,
  whose error texts clients see verbatim in 400 answers;
- log lines print durations with `Duration.String()`.
"""

from __future__ import annotations

import time

NS_PER_S = 1_000_000_000
# Go's time.Duration(math.MaxInt64): what a negative keep_alive means ("forever").
FOREVER_NS = 2**63 - 1

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # µ (micro sign)
    "\u03bcs": 1_000,  # μ (Greek mu)
    "ms": 1_000_000,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3600 * NS_PER_S,
}

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


def go_quote(text: str) -> str:
    """The `quote` helper of Go's time package, used in its error messages."""
    out = ['"']
    for char in text:
        if ord(char) >= 0x80 or char < " ":
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8", "replace"))
        else:
            if char in '"\\':
                out.append("\\")
            out.append(char)
    out.append('"')
    return "".join(out)


def parse_duration(text: str) -> int:
    """Go's `time.ParseDuration`: nanoseconds, or ValueError with Go's message."""
    original = text
    invalid = ValueError("time: invalid duration " + go_quote(original))
    negative = False
    if text and text[0] in "+-":
        negative = text[0] == "-"
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise invalid
    total = 0
    while text:
        if not (text[0] == "." or text[0].isascii() and text[0].isdigit()):
            raise invalid
        i = 0
        while i < len(text) and "0" <= text[i] <= "9":
            i += 1
        whole, text = text[:i], text[i:]
        fraction = ""
        if text.startswith("."):
            text = text[1:]
            j = 0
            while j < len(text) and "0" <= text[j] <= "9":
                j += 1
            fraction, text = text[:j], text[j:]
        if not whole and not fraction:
            raise invalid
        k = 0
        while k < len(text) and text[k] != "." and not ("0" <= text[k] <= "9"):
            k += 1
        if k == 0:
            raise ValueError("time: missing unit in duration " + go_quote(original))
        unit, text = text[:k], text[k:]
        if unit not in _UNIT_NS:
            raise ValueError(
                "time: unknown unit " + go_quote(unit) + " in duration " + go_quote(original))
        scale = _UNIT_NS[unit]
        value = int(whole or "0") * scale
        if fraction:
            value += int(int(fraction) * (scale / 10 ** len(fraction)))
        total += value
        if total > 2**63:
            raise invalid
    if negative:
        return -total
    if total > FOREVER_NS:
        raise invalid
    return total


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
