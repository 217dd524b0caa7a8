"""Go's ``time.ParseDuration`` and Ollama's ``keep_alive`` rule, to the letter.

Ollama reads a ``keep_alive`` (api.Duration's UnmarshalJSON, api/types.go)
as seconds when it is a JSON number (fractions allowed, negative = forever,
0 = unload now) and through ``time.ParseDuration`` when it is a string, so
a string needs a unit: ``"-1"`` and ``"300"`` are 400s (``time: missing unit
in duration "-1"``). The daemon checks keep_alive values with these
functions before Ollama sees them; the stand-in answers with them, so both
sides follow one reading of Go's rules.
"""

from __future__ import annotations

NS_PER_S = 1_000_000_000
#: Go's time.Duration(math.MaxInt64): what a negative keep_alive means ("forever").
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


def is_duration(text: str) -> bool:
    """Whether Go's `time.ParseDuration` takes ``text``."""
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


def keep_alive_ns(value: int | float | str) -> int:
    """A ``keep_alive`` as Ollama reads it, in nanoseconds (negative: :data:`FOREVER_NS`).

    ValueError with Go's message for a string that is no Go duration; the
    caller has checked that ``value`` is a number or a string.
    """
    if isinstance(value, str):
        ns = parse_duration(value)
        return FOREVER_NS if ns < 0 else ns
    return FOREVER_NS if value < 0 else int(value * NS_PER_S)
