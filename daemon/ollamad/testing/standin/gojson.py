"""JSON the way Go's encoding/json (and so Ollama) writes and reads it.

Writing: compact, UTF-8, with `<`, `>`, `&`, U+2028 and U+2029 escaped (Go's
HTML-safe default). Reading: only the first JSON value of a body counts (gin
uses a `json.Decoder`), and errors carry Go's texts — `invalid character 'x'
looking for beginning of value`, `unexpected EOF`, `json: cannot unmarshal
string into Go struct field GenerateRequest.stream of type bool` — because
Ollama answers them verbatim in 400 responses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

_HTML_SAFE = str.maketrans({
    "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
    "\u2028": "\\u2028", "\u2029": "\\u2029",
})
_WHITESPACE = " \t\r\n"


class EmptyBody(Exception):
    """The body held no JSON value at all (Go's io.EOF)."""


class DecodeError(Exception):
    """The body is not JSON, or a field has the wrong type; `str()` is Go's text."""


def dumps(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.translate(_HTML_SAFE).encode("utf-8", "replace")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(data: bytes) -> Any:
    """The first JSON value of `data`, like `json.NewDecoder(body).Decode(&v)`."""
    text = data.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    if start == len(text):
        raise EmptyBody()
    try:
        return _DECODER.raw_decode(text, start)[0]
    except ValueError:
        raise DecodeError(_Scanner(text, start).error()) from None


# --- Go's scanner, to name the first syntax error the way Go does ------------

class _SyntaxError(Exception):
    pass


def _quote_char(char: str) -> str:
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    # Go quotes one byte; a multi-byte character shows its first byte.
    byte = char.encode("utf-8", "replace")[0]
    named = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}
    if byte in named:
        return f"'{named[byte]}'"
    char = chr(byte)
    if byte < 0x20 or byte == 0x7F:
        return f"'\\x{byte:02x}'"
    if not char.isprintable():
        return f"'\\u{byte:04x}'"
    return f"'{char}'"


class _Scanner:
    def __init__(self, text: str, start: int):
        self.text = text
        self.pos = start

    def error(self) -> str:
        try:
            self._value()
        except _SyntaxError as exc:
            return str(exc)
        return "unexpected EOF"  # Python refused what Go's scanner accepts: rare

    def _peek(self) -> str:
        if self.pos >= len(self.text):
            raise _SyntaxError("unexpected EOF")
        return self.text[self.pos]

    def _fail(self, context: str):
        raise _SyntaxError(f"invalid character {_quote_char(self._peek())} {context}")

    def _skip_whitespace(self) -> str:
        while self._peek() in _WHITESPACE:
            self.pos += 1
        return self.text[self.pos]

    def _value(self):
        char = self._skip_whitespace()
        if char == "{":
            self._object()
        elif char == "[":
            self._array()
        elif char == '"':
            self._string()
        elif char == "-" or "0" <= char <= "9":
            self._number()
        elif char in "tfn":
            self._literal({"t": "true", "f": "false", "n": "null"}[char])
        else:
            self._fail("looking for beginning of value")

    def _object(self):
        self.pos += 1
        if self._skip_whitespace() == "}":
            self.pos += 1
            return
        while True:
            if self._skip_whitespace() != '"':
                self._fail("looking for beginning of object key string")
            self._string()
            if self._skip_whitespace() != ":":
                self._fail("after object key")
            self.pos += 1
            self._value()
            char = self._skip_whitespace()
            if char == "}":
                self.pos += 1
                return
            if char != ",":
                self._fail("after object key:value pair")
            self.pos += 1

    def _array(self):
        self.pos += 1
        if self._skip_whitespace() == "]":
            self.pos += 1
            return
        while True:
            self._value()
            char = self._skip_whitespace()
            if char == "]":
                self.pos += 1
                return
            if char != ",":
                self._fail("after array element")
            self.pos += 1

    def _string(self):
        self.pos += 1
        while True:
            char = self._peek()
            if char == '"':
                self.pos += 1
                return
            if char < " ":
                self._fail("in string literal")
            self.pos += 1
            if char == "\\":
                escape = self._peek()
                if escape == "u":
                    self.pos += 1
                    for _ in range(4):
                        if self._peek() not in "0123456789abcdefABCDEF":
                            self._fail("in \\u hexadecimal character escape")
                        self.pos += 1
                elif escape in '"\\/bfnrt':
                    self.pos += 1
                else:
                    self._fail("in string escape code")

    def _digits(self, context: str | None):
        if context and not self._digit_here():
            self._fail(context)
        while self._digit_here():
            self.pos += 1

    def _digit_here(self) -> bool:
        return self.pos < len(self.text) and "0" <= self.text[self.pos] <= "9"

    def _number(self):
        if self.text[self.pos] == "-":
            self.pos += 1
            if not self._digit_here():
                self._fail("in numeric literal")
        if self.text[self.pos] == "0":
            self.pos += 1
        else:
            self._digits(None)
        if self.pos < len(self.text) and self.text[self.pos] == ".":
            self.pos += 1
            self._digits("after decimal point in numeric literal")
        if self.pos < len(self.text) and self.text[self.pos] in "eE":
            self.pos += 1
            if self._peek() in "+-":
                self.pos += 1
            self._digits("in exponent of numeric literal")

    def _literal(self, word: str):
        self.pos += 1
        for expected in word[1:]:
            if self._peek() != expected:
                self._fail(f"in literal {word} (expecting '{expected}')")
            self.pos += 1


# --- Go struct decoding: which fields exist and what types they take ----------

@dataclass(frozen=True)
class GoType:
    """A Go type as the decoder sees it: its printed name and what it accepts."""

    name: str
    accepts: str  # string | bool | int | float | map | any | slice | struct | duration
    element: "GoType | None" = None
    fields: Mapping[str, "GoType"] | None = None


STRING = GoType("string", "string")
BOOL = GoType("bool", "bool")
INT = GoType("int", "int")
FLOAT = GoType("float64", "float")
MAP = GoType("map[string]interface {}", "map")
ANY = GoType("interface {}", "any")
RAW = GoType("json.RawMessage", "any")
DURATION = GoType("api.Duration", "duration")


def slice_of(element: GoType, name: str | None = None) -> GoType:
    return GoType(name or "[]" + element.name, "slice", element=element)


def struct(name: str, /, **fields: GoType) -> GoType:
    """A Go struct type; `name` includes the package, e.g. "api.Message"."""
    return GoType(name, "struct", fields=fields)


def go_type_name(value: Any) -> str:
    """Go's `%T` of a decoded JSON value (what `interface {}` holds)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "map[string]interface {}" if isinstance(value, dict) else "[]interface {}"


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _mismatch(value: Any, go_type: GoType) -> str | None:
    """What Go prints for `value` when it does not fit `go_type`, else None."""
    accepts = go_type.accepts
    if value is None or accepts in ("any", "duration"):
        return None
    kind = _json_kind(value)
    if accepts == "int":
        if kind == "number" and not isinstance(value, float):
            return None
        return f"number {value!r}" if kind == "number" else kind
    wanted = {"string": "string", "bool": "bool", "float": "number", "map": "object",
              "slice": "array", "struct": "object"}[accepts]
    return None if kind == wanted else kind


def decode_struct(data: bytes, go_type: GoType) -> dict[str, Any]:
    """Decode `data` into the fields of `go_type`; raise DecodeError/EmptyBody like Go.

    Returns the known fields that were present and not null, keyed by their
    JSON names. Unknown keys are ignored and names match case-insensitively,
    as in Go. `duration` fields come back raw: their own parser reports errors.
    """
    value = loads(data)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError(
            f"json: cannot unmarshal {_json_kind(value)} into Go value of type {go_type.name}")
    errors: list[str] = []
    owner = go_type.name.rpartition(".")[2]  # Go names the struct without its package
    fields = _decode_fields(value, go_type, owner, "", errors)
    if errors:
        raise DecodeError(errors[0])
    return fields


def _decode_fields(obj: dict, go_type: GoType, owner: str, prefix: str,
                   errors: list[str]) -> dict[str, Any]:
    assert go_type.fields is not None
    by_folded_name = {name.lower(): name for name in go_type.fields}
    result: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in go_type.fields else by_folded_name.get(key.lower())
        if name is None or value is None:
            continue
        _check(value, go_type.fields[name], owner, prefix + name, errors)
        result[name] = value
    return result


def _check(value: Any, go_type: GoType, owner: str, path: str, errors: list[str]):
    found = _mismatch(value, go_type)
    if found is not None:
        errors.append(f"json: cannot unmarshal {found} into Go struct field "
                      f"{owner}.{path} of type {go_type.name}")
    elif go_type.accepts == "slice":
        for item in value:
            _check(item, go_type.element, owner, path, errors)
    elif go_type.accepts == "struct":
        _decode_fields(value, go_type, owner, path + ".", errors)
