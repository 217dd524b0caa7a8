"""Deterministic pretend model output: tokens, prose, JSON answers, embeddings.

A "token" is a word-ish piece: optional leading whitespace plus a word or one
punctuation mark. Concatenating the pieces gives the text back exactly, so
token counts, streamed chunks and the full answer always agree.

The same key (model, rendered prompt, sampling options, format) always gives
the same answer; the key is hashed into the seed of a private PRNG.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import zlib
from functools import lru_cache
from typing import Any

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
_VOCABULARY_SIZE = 128256  # llama 3's, so context token ids look familiar
_WORDS = (
    "the model answer question data system process result value time people way day "
    "part place case group number point work fact world example reason idea state "
    "small large early recent simple clear useful careful quick steady common local "
    "general specific important possible different similar certain likely short long "
    "is are was can will should could may often usually also then still only just "
    "makes takes gives shows uses finds keeps brings helps starts turns moves holds "
    "in on at by for with from into over under about between through after before "
    "and or but so because while when where which that this these those each every "
    "request server client memory signal queue token stream batch worker response "
    "check limit retry health status report error message record output input"
).split()


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def token_ids(pieces: list[str] | tuple[str, ...]) -> list[int]:
    return [zlib.crc32(piece.encode("utf-8")) % _VOCABULARY_SIZE for piece in pieces]


def _rng(*parts: str) -> random.Random:
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _sentence(rng: random.Random, low: int = 5, high: int = 12) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize()


def _prose(rng: random.Random) -> str:
    return " ".join(_sentence(rng) + "." for _ in range(rng.randint(2, 4)))


@lru_cache(maxsize=4096)
def answer(key: str, format_json: str | None) -> tuple[str, ...]:
    """The token pieces of the answer for `key`.

    `format_json` is None (prose), '"json"' (any JSON object) or a JSON
    schema as JSON text (a value matching it, properties in schema order).
    """
    rng = _rng(key, format_json or "")
    if format_json is None:
        text = _prose(rng)
    elif format_json == '"json"':
        text = json.dumps({"answer": _sentence(rng)})
    else:
        schema = json.loads(format_json)
        text = json.dumps(_SchemaValue(schema, rng).make(schema, depth=0))
    return tuple(tokenize(text))


@lru_cache(maxsize=1024)
def reasoning(key: str) -> tuple[str, ...]:
    """The token pieces of what a thinking model thinks before it answers `key`."""
    rng = _rng("thinking", key)
    return tuple(tokenize(" ".join(_sentence(rng) + "." for _ in range(rng.randint(1, 3)))))


def value_for(schema: dict, key: str) -> Any:
    """A value matching the JSON `schema`, deterministic in `key` (tool call arguments)."""
    return _SchemaValue(schema, _rng("value", key)).make(schema, depth=0)


class _SchemaValue:
    """Builds a value that satisfies simple JSON schemas, the kind pydantic emits."""

    def __init__(self, root: dict, rng: random.Random):
        self.root = root
        self.rng = rng

    def _resolve(self, schema: dict) -> dict:
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            return target if isinstance(target, dict) else {}
        for combinator in ("anyOf", "oneOf", "allOf"):
            options = [option for option in schema.get(combinator) or []
                       if isinstance(option, dict) and option.get("type") != "null"]
            if options:
                return self._resolve(options[0])
        return schema

    def make(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict) or depth > 8:
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(schema["enum"])
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        makers = {"object": self._object, "array": self._array, "string": self._string,
                  "integer": self._integer, "number": self._number, "boolean": self._boolean}
        return makers.get(kind, self._null)(schema, depth)

    def _object(self, schema: dict, depth: int) -> dict:
        properties = schema.get("properties") or {}
        return {name: self.make(sub, depth + 1) for name, sub in properties.items()}

    def _array(self, schema: dict, depth: int) -> list:
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 3)))
        low = min(low, high)
        return [self.make(schema.get("items", {}), depth + 1)
                for _ in range(self.rng.randint(low, high))]

    def _string(self, schema: dict, depth: int) -> str:
        text = _sentence(self.rng, 1, 4)
        if "maxLength" in schema:
            text = text[:int(schema["maxLength"])]
        return text.ljust(int(schema.get("minLength", 0)), "x")

    def _integer(self, schema: dict, depth: int) -> int:
        low = math.ceil(schema.get("minimum", 0))
        return self.rng.randint(low, max(low, math.floor(schema.get("maximum", low + 100))))

    def _number(self, schema: dict, depth: int) -> float:
        low = float(schema.get("minimum", 0.0))
        high = float(schema.get("maximum", low + 100.0))
        return min(high, max(low, round(self.rng.uniform(low, high), 2)))

    def _boolean(self, schema: dict, depth: int) -> bool:
        return self.rng.random() < 0.5

    def _null(self, schema: dict, depth: int) -> None:
        return None


def _millionths(value: int) -> str:
    """`value / 1e6` printed as Go prints that float32 (shortest, no exponent)."""
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # Go switches to exponent form below 1e-6 (and float32(1e-6) is below it).
    whole, fraction = divmod(max(abs(value), 2), 1_000_000)
    fraction_text = f"{fraction:06d}".rstrip("0")
    return f"{sign}{whole}.{fraction_text}" if fraction_text else f"{sign}{whole}"


@lru_cache(maxsize=2048)
def embedding_json(model: str, text: str, dimensions: int) -> str:
    """A unit-length vector for (model, text) as a JSON array, six decimals."""
    rng = _rng("embedding", model, text)
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return "[" + ",".join(_millionths(round(x / norm * 1e6)) for x in vector) + "]"
