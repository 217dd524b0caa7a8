"""The declarative part of the configuration: each key's type, range, meaning and reload rule.

A setting is a dataclass field made with :func:`setting`; its metadata is a
:class:`Spec`. Validation, the environment-variable names, the example file
and the reload report are all read off the specs, so a new key needs one
declaration and nothing else. Rules that tie keys together are
:class:`Rule` values in :data:`ollamad.config.RULES`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Iterator

ENV_PREFIX = "OLLAMAD_"


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what it may be."""


class Applies(enum.Enum):
    """When a changed value takes effect."""

    LIVE = "at once (reload)"
    OLLAMA_RESTART = "at Ollama's next start"
    DAEMON_RESTART = "at the daemon's next start"


@dataclass(frozen=True)
class Spec:
    doc: str
    #: Inclusive bounds, or an exclusive lower bound ("above").
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple[str, ...] = ()
    applies: Applies = Applies.LIVE
    #: Shown in the example file instead of repr(default) (an octal mode).
    shown: Callable[[Any], str] | None = None

    def describe(self) -> str:
        """The valid values, in words ("> 0", "1 to 64", "one of a, b")."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = []
        if self.above is not None:
            parts.append(f"> {_num(self.above)}")
        if self.low is not None and self.high is not None:
            return f"{_num(self.low)} to {_num(self.high)}"
        if self.low is not None:
            parts.append(f">= {_num(self.low)}")
        if self.high is not None:
            parts.append(f"<= {_num(self.high)}")
        return " and ".join(parts) or "any value"

    def check(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.low is None or value >= self.low)
                and (self.high is None or value <= self.high)
                and (self.above is None or value > self.above))


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting(default: Any, doc: str, **spec: Any) -> Any:
    """A config field: its default and its :class:`Spec`."""
    if callable(default) and not isinstance(default, (str, int, float, bool)):
        return field(default_factory=default, metadata={"spec": Spec(doc, **spec)})
    return field(default=default, metadata={"spec": Spec(doc, **spec)})


def table(doc: str, example: list[str]) -> Any:
    """A config field of named tables (``[NAME."entry"]`` in TOML), checked by its own parser.

    Tables come from the file only (no environment variables); ``example`` is
    shown, commented out, in the example file.
    """
    return field(default_factory=dict, metadata={"table": doc, "example": example})


@dataclass(frozen=True)
class Rule:
    """A constraint between keys: ``holds(config)`` must be true."""

    keys: tuple[str, ...]
    holds: Callable[[Any], bool]
    message: str


@dataclass(frozen=True)
class Key:
    """One setting as seen from the top: its dotted name, field and spec."""

    name: str            # "workers", "ollama.probe_interval"
    section: str | None
    attribute: str
    type: type
    spec: Spec
    default: Any

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.name.replace(".", "_").upper()

    def value(self, config: Any) -> Any:
        holder = getattr(config, self.section) if self.section else config
        return getattr(holder, self.attribute)


#: ``tuple`` settings are lists of strings (a TOML array; a comma-separated variable).
_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "tuple": tuple}


def keys(cls: type, sections: dict[str, type]) -> Iterator[Key]:
    """Every setting of ``cls`` and its sections, in declaration order."""
    for section, holder in [(None, cls), *sections.items()]:
        for f in fields(holder):
            if (section is None and f.name in sections) or "table" in f.metadata:
                continue
            kind = _TYPES[f.type] if isinstance(f.type, str) else f.type
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            yield Key(f"{section}.{f.name}" if section else f.name, section, f.name, kind,
                      f.metadata["spec"], default)


def check_ranges(config: Any, all_keys: list[Key], rules: list[Rule],
                 origin: Callable[[Key], str]) -> None:
    """Raise :class:`ConfigError` for the first value out of range or rule broken."""
    for key in all_keys:
        value = key.value(config)
        if not key.spec.check(value):
            raise ConfigError(f"{key.name}: {value!r} is out of range: must be "
                              f"{key.spec.describe()}{origin(key)}")
    by_name = {key.name: key for key in all_keys}
    for rule in rules:
        if not rule.holds(config):
            values = ", ".join(f"{k} = {by_name[k].value(config)!r}" for k in rule.keys)
            where = "".join(origin(by_name[k]) for k in rule.keys)
            raise ConfigError(f"{rule.keys[0]}: {rule.message} (now {values}){where}")


def coerce(key: Key, value: Any, from_text: bool, where: str) -> Any:
    """Check (or, for environment text, convert) one value against its key's type."""
    expected = key.type
    if expected is tuple:
        return _strings(key, value, from_text, where)
    if from_text:
        text = str(value).strip()
        try:
            if expected is bool:
                lowered = text.lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if expected is int:
                return int(text, 8) if key.attribute == "socket_mode" else int(text, 0)
            if expected is float:
                return float(text)
        except ValueError:
            raise ConfigError(f"{key.name}: expected {_type_words(expected)}, got {text!r} "
                              f"(from {where})") from None
        return text
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, str) and key.attribute == "socket_mode":
        try:
            return int(value, 8)
        except ValueError:
            raise ConfigError(f"{key.name}: expected an octal mode such as \"0660\"") from None
    if type(value) is not expected:
        raise ConfigError(f"{key.name}: expected {_type_words(expected)}, got "
                          f"{type(value).__name__} {value!r} ({where})")
    return value


def _strings(key: Key, value: Any, from_text: bool, where: str) -> tuple[str, ...]:
    if from_text:
        return tuple(part.strip() for part in str(value).split(",") if part.strip())
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{key.name}: expected a list of strings, got {value!r} ({where})")
    return tuple(value)


def _type_words(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]


def toml_value(value: Any) -> str:
    """One value written as TOML (strings, numbers and booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


def example_lines(all_keys: list[Key]) -> list[str]:
    """Every key, commented out with its default, a one-line meaning and its range."""
    lines: list[str] = []
    section: str | None = None
    for key in all_keys:
        if key.section != section:
            section = key.section
            lines += ["", f"[{section}]"]
        spec = key.spec
        notes = [f"valid: {spec.describe()}"] if spec.describe() != "any value" else []
        if spec.applies is not Applies.LIVE:
            notes.append(f"applies {spec.applies.value}")
        lines.append(f"# {spec.doc}" + (f" ({'; '.join(notes)})" if notes else ""))
        shown = spec.shown(key.default) if spec.shown else toml_value(key.default)
        lines.append(f"# {key.attribute} = {shown}")
    return lines


def host_port(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` as (host, port), brackets of an IPv6 host removed, or None when it is
    not one (the metrics listener; a tcp:// endpoint after its scheme)."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)
