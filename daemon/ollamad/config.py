"""Configuration: defaults, then a TOML file, then ``OLLAMAD_*`` variables, then flags.

Every key has a default (those of the old in-process client where it had
one). An unknown key or a value of the wrong type stops start-up with an
error that names the key. Settings are frozen values; a reload builds a new
:class:`Config` and the daemon swaps it in.

Environment names: ``OLLAMAD_<KEY>`` for top-level keys and
``OLLAMAD_<SECTION>_<KEY>`` for keys of a section, upper-cased
(``OLLAMAD_WORKERS=4``, ``OLLAMAD_OLLAMA_PROBE_INTERVAL=2``). ``OLLAMAD_CONFIG``
names the file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ollamad_client.protocol import DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/ollamad/ollamad.toml"
DEFAULT_SOCKET = "ipc:///run/ollamad/ollamad.sock"
ENV_PREFIX = "OLLAMAD_"


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


@dataclass(frozen=True)
class OllamaSettings:
    """How ollamad reaches, starts and watches Ollama."""

    #: Where Ollama listens. In spawn mode a port of 0 lets Ollama pick one.
    url: str = "http://127.0.0.1:11434"
    #: "spawn": start and supervise `command`. "external": watch an Ollama
    #: started by someone else; restart it only through `restart_command`.
    mode: str = "spawn"
    command: str = "ollama serve"
    #: Supervise the bundled stand-in (`ollamad stand-in`) instead of `command`.
    stand_in: bool = False
    restart_command: str = ""
    #: OLLAMA_NUM_PARALLEL for a spawned Ollama; 0 means "the worker count".
    num_parallel: int = 0
    startup_timeout: float = 60.0
    stop_grace: float = 10.0
    probe_interval: float = 5.0
    probe_timeout: float = 2.0
    #: Kept below 2 × probe_interval so a wedge is caught within 3 intervals.
    inference_probe_timeout: float = 8.0
    #: Hung = the inference probe fails and no in-flight generation has made
    #: progress for this long (or none is in flight).
    hang_after: float = 30.0
    warm_model: bool = True
    keep_alive: str = "30m"
    #: The first restart in a window is immediate; later ones wait this,
    #: doubling up to restart_backoff_max.
    restart_backoff_initial: float = 1.0
    restart_backoff_max: float = 30.0
    max_restarts: int = 5
    restart_window: float = 300.0


@dataclass(frozen=True)
class GpuSettings:
    """The NVML watch and the policies that act on it."""

    poll_interval: float = 5.0
    #: Fraction of a GPU's memory in use above which ollamad reports degraded.
    memory_pressure: float = 0.95
    #: VRAM Ollama may hold beyond its loaded models before the leak policy
    #: restarts it (idle only). 0 disables the policy (the default).
    leak_threshold_bytes: int = 0
    leak_duration: float = 300.0
    #: The module that provides NVML's Python API. Only tests change it, to
    #: script GPU readings on a machine without a GPU.
    nvml_module: str = "pynvml"


@dataclass(frozen=True)
class Config:
    socket: str = DEFAULT_SOCKET
    #: Mode of an ipc socket file: owner and group may connect, nobody else.
    socket_mode: int = 0o660
    #: Members of this group may call admin ops (root and the daemon's own
    #: user always may).
    admin_group: str = ""
    model: str = "llama3.1:8b"
    workers: int = 8
    queue_size: int = 256
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_batch: int = 256
    #: Cap on num_predict, against runaway generation.
    max_tokens_cap: int = 4096
    attempt_timeout: float = 10.0
    max_attempts: int = 3
    backoff_initial: float = 2.0
    backoff_multiplier: float = 2.0
    backoff_max: float = 8.0
    #: How long in-flight requests may finish when the daemon stops.
    shutdown_grace: float = 10.0
    log_level: str = "info"
    ollama: OllamaSettings = field(default_factory=OllamaSettings)
    gpu: GpuSettings = field(default_factory=GpuSettings)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


_SECTIONS = {"ollama": OllamaSettings, "gpu": GpuSettings}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _coerce(key: str, value: Any, expected: type, from_text: bool) -> Any:
    """Check (or, for environment text, convert) one value against its type."""
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
                return int(text, 0)
            if expected is float:
                return float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected {expected.__name__}, got {text!r}") from None
        return text
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, str) and key.endswith("socket_mode"):
        try:
            return int(value, 8)
        except ValueError:
            raise ConfigError(f"{key}: expected an octal mode such as \"0660\"") from None
    if type(value) is not expected:
        raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _apply(cls: type, current: Any, values: Mapping[str, Any], where: str,
           from_text: bool) -> Any:
    known = {f.name: f for f in fields(cls)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{where}{key}"
        if key not in known:
            raise ConfigError(f"{name}: unknown key")
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected a table")
            changes[key] = _apply(_SECTIONS[key], getattr(current, key), value,
                                  f"{key}.", from_text)
            continue
        expected = _TYPES[known[key].type] if isinstance(known[key].type, str) else known[key].type
        changes[key] = _coerce(name, value, expected, from_text)
    return dataclasses.replace(current, **changes)


def _validate(config: Config) -> Config:
    checks = [
        ("workers", config.workers >= 1),
        ("queue_size", config.queue_size >= 1),
        ("max_message_bytes", config.max_message_bytes >= 1024),
        ("max_batch", config.max_batch >= 1),
        ("max_tokens_cap", config.max_tokens_cap >= 1),
        ("attempt_timeout", config.attempt_timeout > 0),
        ("max_attempts", config.max_attempts >= 1),
        ("backoff_initial", config.backoff_initial >= 0),
        ("backoff_max", config.backoff_max >= config.backoff_initial),
        ("shutdown_grace", config.shutdown_grace >= 0),
        ("log_level", config.log_level in _LOG_LEVELS),
        ("socket_mode", 0 <= config.socket_mode <= 0o777),
        ("ollama.mode", config.ollama.mode in ("spawn", "external")),
        ("ollama.url", config.ollama.url.startswith(("http://", "https://"))),
        ("ollama.num_parallel", config.ollama.num_parallel >= 0),
        ("ollama.probe_interval", config.ollama.probe_interval > 0),
        ("ollama.startup_timeout", config.ollama.startup_timeout > 0),
        ("ollama.max_restarts", config.ollama.max_restarts >= 1),
        ("gpu.poll_interval", config.gpu.poll_interval > 0),
        ("gpu.memory_pressure", 0 < config.gpu.memory_pressure <= 1),
        ("gpu.leak_threshold_bytes", config.gpu.leak_threshold_bytes >= 0),
    ]
    for key, ok in checks:
        if not ok:
            raise ConfigError(f"{key}: invalid value")
    return config


def _environment_values(env: Mapping[str, str]) -> dict[str, Any]:
    """Map ``OLLAMAD_*`` variables onto config keys; other names are ignored."""
    top = {f.name for f in fields(Config)} - set(_SECTIONS)
    values: dict[str, Any] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key in top:
            values[key] = text
            continue
        for section, cls in _SECTIONS.items():
            sub = key.removeprefix(section + "_")
            if sub != key and sub in {f.name for f in fields(cls)}:
                values.setdefault(section, {})[sub] = text
                break
        else:
            # The environment is shared with everything else on the host (the
            # stand-in's OLLAMAD_STANDIN_*, the client's OLLAMAD_SOCKET and
            # OLLAMAD_APP, CI's own variables): a name that is no setting is
            # not ours to refuse. A known name with a bad value still is.
            log.debug("ignoring %s: not an ollamad setting", name)
    return values


def load(path: str | os.PathLike[str] | None = None,
         env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the effective configuration.

    ``path``: the TOML file; ``None`` means ``$OLLAMAD_CONFIG`` or the default
    path, and a missing *default* file is fine (all defaults). ``overrides``
    are command-line values, already typed, keyed like the file (sections as
    nested dicts).
    """
    env = os.environ if env is None else env
    explicit = path is not None or "OLLAMAD_CONFIG" in env
    file_path = Path(path if path is not None else env.get("OLLAMAD_CONFIG", DEFAULT_CONFIG_PATH))
    config = Config()
    try:
        with open(file_path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {file_path}: not found") from None
        data = {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file_path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {file_path}: {exc.strerror}") from None
    config = _apply(Config, config, data, "", from_text=False)
    config = _apply(Config, config, _environment_values(env), "", from_text=True)
    config = _apply(Config, config, overrides or {}, "", from_text=False)
    return _validate(config)


def toml_value(value: Any) -> str:
    """One value written as TOML (strings, numbers and booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def example_toml() -> str:
    """The example config file: every key with its default value, commented out."""
    lines = ["# ollamad configuration. Every key is optional; shown are the defaults.",
             "# Environment variables OLLAMAD_<KEY> / OLLAMAD_<SECTION>_<KEY> override",
             "# this file, and command-line flags override both.", ""]
    defaults = Config()
    for f in fields(Config):
        if f.name in _SECTIONS:
            continue
        value = getattr(defaults, f.name)
        shown = f'"{value:04o}"' if f.name == "socket_mode" else toml_value(value)
        lines.append(f"# {f.name} = {shown}")
    for section in _SECTIONS:
        lines += ["", f"[{section}]"]
        for f in fields(_SECTIONS[section]):
            lines.append(f"# {f.name} = {toml_value(getattr(getattr(defaults, section), f.name))}")
    return "\n".join(lines) + "\n"
