"""The config file's named tables: runner options per model, limits per user, profiles.

Each parser takes the table as TOML gave it and returns checked values, or
raises :class:`ConfigError` naming the table, the key and what it may be.
Tables come from the file only, never from the environment.
"""

from __future__ import annotations

import dataclasses
import pwd
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ollamad import goduration
from ollamad.configspec import ConfigError
from ollamad.curvekeys import KEY_NAME, KEY_USER_PREFIX
from ollamad.ollama import names, runner
from ollamad_client.protocol import MAX_TIMEOUT

#: What a profile or a request may ask for as its lane.
PRIORITIES = ("interactive", "batch")
THINK_LEVELS = ("high", "medium", "low", "max")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def _tables(name: str, value: Any, where: Any, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not isinstance(where, str):
        raise ConfigError(f"{name}: expected tables such as {example} (in the config file)")
    for entry, content in value.items():
        if not isinstance(content, Mapping):
            raise ConfigError(f"{name}.{entry!r}: expected a table {example}")
    return value


def runner_options(value: Any, where: Any) -> dict[str, dict[str, Any]]:
    """``[runner_options."MODEL"]`` tables, keyed by canonical model name."""
    tables: dict[str, dict[str, Any]] = {}
    for model, options in _tables("runner_options", value, where,
                                  '[runner_options."llama3.1:8b"]').items():
        canonical = names.canonical(model)
        if canonical is None:
            raise ConfigError(f"runner_options.{model!r}: not a valid model name ({where})")
        if canonical in tables:
            raise ConfigError(f"runner_options.{model!r}: {canonical} is configured twice ({where})")
        for option, setting_value in options.items():
            problem = runner.check_option(option, setting_value)
            if problem:
                raise ConfigError(f"runner_options.{model!r}.{option}: {problem}, got "
                                  f"{setting_value!r} ({where})")
        tables[canonical] = dict(options)
    return tables


def user_limits(value: Any, where: Any, defaults: Any) -> dict[int | str, dict[str, Any]]:
    """``[user_limits."USER"]`` tables (a user name or a uid), keyed by uid, and
    ``[user_limits."key:NAME"]`` tables for a CURVE key's clients on tcp, keyed by
    ``"key:NAME"`` (a string: it can never stand for a uid).

    ``defaults`` is the ``[tenants]`` settings object: a table may set any of
    its keys, checked by the same specs.
    """
    specs = {f.name: f.metadata["spec"] for f in dataclasses.fields(defaults)}
    by_user: dict[int | str, dict[str, Any]] = {}
    for user, limits in _tables("user_limits", value, where, '[user_limits."alice"]').items():
        who = _principal(user, where)
        if who in by_user:
            raise ConfigError(f"user_limits.{user!r}: uid {who} is configured twice ({where})")
        checked = {}
        for key, limit in limits.items():
            spec = specs.get(key)
            if spec is None:
                raise ConfigError(f"user_limits.{user!r}.{key}: unknown key (one of "
                                  f"{', '.join(specs)})")
            kind = type(getattr(defaults, key))
            if kind is float and type(limit) is int:
                limit = float(limit)
            if type(limit) is not kind or not spec.check(limit):
                raise ConfigError(f"user_limits.{user!r}.{key}: {limit!r} is not valid: must be "
                                  f"{spec.describe()} ({where})")
            checked[key] = limit
        by_user[who] = checked
    return by_user


def _principal(user: str, where: str) -> int | str:
    """A uid, or ``"key:NAME"`` for a CURVE key (the name as authorized_clients has it)."""
    if user.startswith(KEY_USER_PREFIX):
        if not KEY_NAME.fullmatch(user[len(KEY_USER_PREFIX):]):
            raise ConfigError(f"user_limits.{user!r}: a key name is 1 to 64 letters, digits "
                              f"or ._@+- characters ({where})")
        return user
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(f"user_limits.{user!r}: no such user ({where})") from None


@dataclass(frozen=True)
class Profile:
    """What an app does, as defaults for its requests: the request's own arguments win."""

    name: str
    #: Request arguments (temperature, max_tokens, system, model, options, keep_alive,
    #: think, format) as a request would carry them.
    args: Mapping[str, Any]
    priority: str | None = None
    timeout: float | None = None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: Profile key -> (check, what it must be).
PROFILE_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (lambda v: _number(v) and 0 <= v <= 100, "a number from 0"),
    "max_tokens": (lambda v: type(v) is int and v > 0, "a positive integer"),
    "system": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str) and names.canonical(v) is not None, "a model name"),
    "keep_alive": (lambda v: (isinstance(v, str) and goduration.is_duration(v)) or _number(v),
                   'a Go duration with a unit ("10m") or a number of seconds'),
    "think": (lambda v: isinstance(v, bool) or v in THINK_LEVELS,
              "true, false or one of " + ", ".join(THINK_LEVELS)),
    "format": (lambda v: v == "json" or isinstance(v, Mapping), '"json" or a JSON schema table'),
    "options": (lambda v: isinstance(v, Mapping), "a table of Ollama sampling options"),
    "priority": (lambda v: v in PRIORITIES, "one of " + ", ".join(PRIORITIES)),
    "timeout": (lambda v: _number(v) and 0 < v <= MAX_TIMEOUT,
                f"a number of seconds in (0, {MAX_TIMEOUT:g}]"),
}


#: The old in-process client's five uses, as profiles (``ollamad example-config``
#: ships them): batch work at low temperature, answers for a person in a hurry.
STANDARD_PROFILES = [
    "[profiles.data_cleaning]", "temperature = 0.1", "max_tokens = 500", 'priority = "batch"',
    "", "[profiles.skill_demand]", "temperature = 0.2", "max_tokens = 800",
    'priority = "batch"',
    "", "[profiles.voice_eval]", "temperature = 0.3", "max_tokens = 400",
    'priority = "interactive"', "timeout = 10",
    "", "[profiles.recommendations]", "temperature = 0.7", "max_tokens = 600",
    'priority = "interactive"', "timeout = 20",
    "", "[profiles.gap_narrative]", "temperature = 0.7", "max_tokens = 1000",
    'priority = "interactive"', "timeout = 30",
]


def profiles(value: Any, where: Any) -> dict[str, Profile]:
    """``[profiles.NAME]`` tables."""
    found: dict[str, Profile] = {}
    for name, table in _tables("profiles", value, where, "[profiles.voice_eval]").items():
        if not _PROFILE_NAME.match(name):
            raise ConfigError(f"profiles.{name!r}: a profile name is 1 to 64 letters, digits, "
                              f"'_', '.' or '-' ({where})")
        for key, item in table.items():
            rule = PROFILE_KEYS.get(key)
            if rule is None:
                raise ConfigError(f"profiles.{name}.{key}: unknown key (one of "
                                  f"{', '.join(PROFILE_KEYS)}) ({where})")
            if not rule[0](item):
                raise ConfigError(f"profiles.{name}.{key}: must be {rule[1]}, got {item!r} "
                                  f"({where})")
        for option in table.get("options", {}):
            if option in runner.OPTIONS:
                raise ConfigError(f"profiles.{name}.options.{option}: a runner option, which "
                                  f"the daemon sets per model ([runner_options]), not a profile")
        args = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in table.items()
                if k not in ("priority", "timeout")}
        timeout = table.get("timeout")
        found[name] = Profile(name, args, table.get("priority"),
                              None if timeout is None else float(timeout))
    return found
