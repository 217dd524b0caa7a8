"""Configuration: defaults, then a TOML file, then ``OLLAMAD_*`` variables, then flags.

Every key has a default (those of the old in-process client where it had
one), a range and a one-line meaning, declared once with
:func:`~ollamad.configspec.setting`. An unknown key in the file, a value of
the wrong type, or a value out of its range stops start-up with an error
that names the key, its valid values and, when it came from the
environment, the variable. Settings are frozen values; a reload builds a new
:class:`Config` and the daemon swaps it in.

Environment names: ``OLLAMAD_<KEY>`` for top-level keys and
``OLLAMAD_<SECTION>_<KEY>`` for keys of a section, upper-cased
(``OLLAMAD_WORKERS=4``, ``OLLAMAD_OLLAMA_PROBE_INTERVAL=2``). ``OLLAMAD_CONFIG``
names the file. Other ``OLLAMAD_*`` variables are not settings and are
ignored (the environment is shared with the stand-in, the client and CI).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ollamad import goduration
from ollamad.configspec import (ENV_PREFIX, Applies, ConfigError, Key, Rule, check_ranges,
                                coerce, example_lines, host_port, keys, setting, table,
                                toml_value)
from ollamad import configtables
from ollamad_client.protocol import DEFAULT_MAX_MESSAGE_BYTES, MAX_TIMEOUT

__all__ = ["Config", "ConfigError", "GpuSettings", "OllamaSettings", "load", "example_toml",
           "toml_value", "all_keys", "changed_keys", "DEFAULT_CONFIG_PATH", "DEFAULT_SOCKET"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/ollamad/ollamad.toml"
DEFAULT_SOCKET = "ipc:///run/ollamad/ollamad.sock"
_MIB = 1024 * 1024
OLLAMA = Applies.OLLAMA_RESTART
DAEMON = Applies.DAEMON_RESTART


@dataclass(frozen=True)
class OllamaSettings:
    """How ollamad reaches, starts and watches Ollama."""

    url: str = setting("http://127.0.0.1:11434", "where Ollama listens; in spawn mode port 0 "
                       "lets Ollama pick one", applies=OLLAMA)
    mode: str = setting("spawn", "spawn: start and supervise `command`; external: watch an "
                        "Ollama someone else runs", choices=("spawn", "external"), applies=DAEMON)
    command: str = setting("ollama serve", "the command that runs Ollama (spawn mode)",
                           applies=OLLAMA)
    stand_in: bool = setting(False, "supervise the bundled stand-in (`ollamad stand-in`) instead "
                             "of `command`", applies=OLLAMA)
    restart_command: str = setting("", "external mode: the command that restarts Ollama "
                                   "(empty: only report failures)")
    num_parallel: int = setting(0, "OLLAMA_NUM_PARALLEL for a spawned Ollama; 0 means the "
                                "worker count plus one slot kept free for the inference probe",
                                low=0, high=1024, applies=OLLAMA)
    context_length: int = setting(4096, "num_ctx of every model, in tokens (also "
                                  "OLLAMA_CONTEXT_LENGTH for a spawned Ollama); its KV cache "
                                  "takes this times the slots; 0 leaves Ollama's own size "
                                  "(4k to 256k by VRAM)", low=0, high=1 << 22)
    load_timeout: float = setting(300.0, "seconds a model load may take (also "
                                  "OLLAMA_LOAD_TIMEOUT for a spawned Ollama); a request's "
                                  "time-out never cuts a load", above=0, high=86400)
    max_pulls: int = setting(2, "model pulls (`ollamad pull`) at once; one more is `busy`",
                             low=1, high=64)
    pull_stall_timeout: float = setting(300.0, "seconds a pull may wait for Ollama's next "
                                        "progress line (Ollama sends none while it checks "
                                        "big blobs' digests) before it fails", above=0,
                                        high=MAX_TIMEOUT)
    client_runner_options: bool = setting(False, "let clients set runner options (num_ctx, "
                                          "num_gpu, ...) other than the configured ones; each "
                                          "change reloads the model: for single-tenant hosts")
    pass_environment: tuple = setting((), "variables of the daemon's environment a spawned "
                                      "Ollama also gets (a name, or a prefix ending in *), "
                                      "beyond OLLAMA_*, CUDA_*, NVIDIA_*, PATH, HOME, LANG, "
                                      "TZ, the proxy variables and the others the README "
                                      "lists", applies=OLLAMA)
    startup_timeout: float = setting(60.0, "seconds Ollama may take to answer GET / after a "
                                     "start", above=0, high=3600)
    stop_grace: float = setting(10.0, "seconds between SIGTERM and SIGKILL when stopping Ollama",
                                above=0, high=600)
    probe_interval: float = setting(5.0, "seconds between probe rounds", above=0, high=3600)
    probe_timeout: float = setting(2.0, "time limit of a GET / probe, in seconds", above=0,
                                   high=600)
    inference_probe_timeout: float = setting(8.0, "time limit of the one-token inference "
                                             "probe, in seconds", above=0, high=600)
    hang_after: float = setting(30.0, "Ollama is hung when the inference probe timed out and no generation "
                                "made progress for this many seconds", above=0, high=3600)
    warm_model: bool = setting(True, "load `model` as soon as Ollama runs")
    keep_alive: str = setting("30m", "how long Ollama keeps the model loaded after the probes "
                              "and warm-up (a Go duration with a unit; \"-1s\": for ever)")
    restart_backoff_initial: float = setting(1.0, "wait before the second restart in a window; "
                                             "it doubles", low=0, high=3600)
    restart_backoff_max: float = setting(30.0, "longest wait between restarts", low=0, high=3600)
    max_restarts: int = setting(5, "restarts within `restart_window` before giving up (FATAL)",
                                low=1, high=1000)
    restart_window: float = setting(300.0, "seconds over which restarts are counted", above=0,
                                    high=86400)


@dataclass(frozen=True)
class GpuSettings:
    """The NVML watch and the policies that act on it."""

    poll_interval: float = setting(5.0, "seconds between GPU readings", above=0, high=3600)
    memory_pressure: float = setting(0.95, "fraction of a GPU's memory in use above which "
                                     "ollamad reports degraded", above=0, high=1)
    leak_threshold_bytes: int = setting(0, "VRAM Ollama may hold beyond its loaded models "
                                        "before the leak policy restarts it when idle; 0 "
                                        "disables the policy", low=0)
    leak_duration: float = setting(300.0, "seconds the excess must last before that restart",
                                   above=0, high=86400)
    nvml_module: str = setting("pynvml", "the module that provides NVML (tests script GPU "
                               "readings with another)", applies=DAEMON)


@dataclass(frozen=True)
class SchedulingSettings:
    """How free slots are shared (:mod:`ollamad.scheduling`)."""

    lanes: bool = setting(True, "interactive requests take free slots before batch ones; "
                          "false: one queue in arrival order")
    fair: bool = setting(True, "within a lane, tenants (user and app) take turns; false: "
                         "arrival order")
    batch_min_share: float = setting(0.25, "fraction of the workers the batch lane keeps "
                                     "while it has work (with too few workers to keep one: "
                                     "every 1/share-th free worker)", low=0, high=1)


@dataclass(frozen=True)
class TenantSettings:
    """Limits per user (uid, or CURVE key on tcp: all its apps together);
    [user_limits."USER"] overrides them."""

    max_queued: int = setting(1024, "items (each prompt of a batch) a user may have waiting; "
                              "more are `busy`", low=1, high=1_000_000)
    max_concurrent: int = setting(256, "workers a user's requests may hold at once; more "
                                  "wait their turn", low=1, high=256)
    max_timeout: float = setting(MAX_TIMEOUT, "longest deadline a user's request may ask "
                                 "for, in seconds", above=0, high=MAX_TIMEOUT)


@dataclass(frozen=True)
class MetricsSettings:
    """What operators read: the Prometheus listener and the request log."""

    listen: str = setting("", "HOST:PORT of the Prometheus /metrics listener (port 0: any "
                          "free one); empty: off", applies=DAEMON)
    max_tenant_labels: int = setting(20, "tenants and models that get label values of "
                                     "their own in /metrics; later ones are `other`",
                                     low=1, high=10_000, applies=DAEMON)
    request_log: str = setting("info", "level of the one log line per finished model "
                               "request", choices=("off", "debug", "info"))


@dataclass(frozen=True)
class CurveSettings:
    """ZeroMQ CURVE on a tcp endpoint: encryption, the server's identity, client keys."""

    secret_key: str = setting("", "the server's secret certificate file (`ollamad keygen` "
                              "writes /etc/ollamad/curve/server.key_secret); set: a tcp "
                              "endpoint serves only CURVE clients; empty: tcp only on "
                              "loopback, unauthenticated. ipc ignores it", applies=DAEMON)
    authorized_clients: str = setting("", "the clients a CURVE endpoint serves: a file of "
                                      "`NAME PUBLIC_KEY` lines (`ollamad keygen --client "
                                      "NAME` prints one); re-read on reload; the name is "
                                      "the client's tenant (key:NAME)")


@dataclass(frozen=True)
class Config:
    socket: str = setting(DEFAULT_SOCKET, "the ZeroMQ endpoint clients connect to (ipc:// or "
                          "tcp://)", applies=DAEMON)
    socket_mode: int = setting(0o660, "mode of an ipc socket file: owner and group may connect",
                               low=0, high=0o777, applies=DAEMON, shown=lambda v: f'"{v:04o}"')
    socket_group: str = setting("", "group of an ipc socket file (the unit's users join "
                                "it); empty: the daemon's own group. The daemon's user must "
                                "be a member", applies=DAEMON)
    runtime_dir: str = setting("", "where ollamad records the Ollama it runs, so that the next "
                               "ollamad stops it after a crash; empty: the ipc socket's "
                               "directory, else $RUNTIME_DIRECTORY, else /run/ollamad",
                               applies=DAEMON)
    admin_group: str = setting("", "members of this group may call admin ops (root and the "
                               "daemon's own user always may)")
    model: str = setting("llama3.1:8b", "the model for requests that name none")
    workers: int = setting(8, "requests sent to Ollama at once", low=1, high=256,
                           applies=DAEMON)
    queue_size: int = setting(256, "requests that may wait for a worker (a batch enters whole "
                              "while there is room)", low=1, high=1_000_000, applies=DAEMON)
    max_queued_bytes: int = setting(256 * _MIB, "bytes of requests admitted and not yet "
                                    "answered; past it new ones are `busy`", low=_MIB)
    max_message_bytes: int = setting(DEFAULT_MAX_MESSAGE_BYTES, "largest request message; "
                                     "libzmq drops the connection of a sender of more",
                                     low=1024, high=1024 * _MIB, applies=DAEMON)
    max_batch: int = setting(256, "most prompts in one batch op (clients split longer lists)",
                             low=1, high=100_000)
    max_embed_inputs: int = setting(256, "most strings in one embed op (clients split longer "
                                    "lists)", low=1, high=100_000)
    max_reply_bytes: int = setting(64 * _MIB, "largest answer read from Ollama for one "
                                   "request (embeddings)", low=_MIB, high=4096 * _MIB)
    max_connections: int = setting(4096, "client connections served at once; more are shut "
                                   "at once (also bounded by the open-file limit)", low=1,
                                   high=1_000_000, applies=DAEMON)
    allowed_models: tuple = setting((), "models clients may use; empty: every model Ollama has")
    load_on_demand: bool = setting(True, "a request may load any allowed model; false: only the "
                                   "configured ones (`model`, those with runner options or a "
                                   "profile) and those already loaded")
    max_keep_alive: str = setting("-1s", "longest keep_alive a client may ask for (a Go "
                                  "duration; \"-1s\": no limit, even for ever; \"1h\" keeps "
                                  "one app from pinning a model)")
    max_tokens_cap: int = setting(4096, "cap on num_predict, against runaway generation",
                                  low=1, high=1_000_000)
    attempt_timeout: float = setting(10.0, "seconds one attempt may wait for Ollama's next "
                                     "chunk", above=0, high=MAX_TIMEOUT)
    max_attempts: int = setting(3, "attempts per request, the first included", low=1, high=100)
    backoff_initial: float = setting(2.0, "wait after the first failed attempt, in seconds",
                                     low=0, high=3600)
    backoff_multiplier: float = setting(2.0, "each further wait is this many times longer",
                                        low=1, high=100)
    backoff_max: float = setting(8.0, "longest wait between attempts, in seconds", low=0,
                                 high=3600)
    shutdown_grace: float = setting(10.0, "seconds in-flight requests may finish when the "
                                    "daemon stops", low=0, high=3600)
    log_level: str = setting("info", "log level", choices=("debug", "info", "warning", "error"))
    ollama: OllamaSettings = setting(OllamaSettings, "Ollama")
    gpu: GpuSettings = setting(GpuSettings, "GPU")
    scheduling: SchedulingSettings = setting(SchedulingSettings, "scheduling")
    tenants: TenantSettings = setting(TenantSettings, "tenants")
    metrics: MetricsSettings = setting(MetricsSettings, "metrics")
    curve: CurveSettings = setting(CurveSettings, "CURVE")
    #: Canonical model name -> runner options (:mod:`ollamad.ollama.runner`).
    runner_options: dict = table(
        "runner options per model; every request for the model carries them, and a client "
        "asking for others is refused (see ollama.client_runner_options)",
        ['[runner_options."llama3.1:8b"]', "num_ctx = 8192", "num_batch = 512"])
    #: uid (or "key:NAME") -> the [tenants] limits it overrides.
    user_limits: dict = table(
        "limits for one user (a name or a uid), or for the tcp clients of one CURVE key "
        "(\"key:NAME\", NAME as in curve.authorized_clients), over the [tenants] defaults",
        ['[user_limits."nobody"]', "max_concurrent = 2", "max_queued = 20000"])
    #: Name -> :class:`~ollamad.configtables.Profile`.
    profiles: dict = table(
        "profiles: defaults for the requests that name one (profile=\"voice_eval\"); the "
        "request's own arguments win; keys: " + ", ".join(configtables.PROFILE_KEYS),
        ["[profiles.translation]", "temperature = 0.2", 'system = "Translate into English."'])

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


_SECTIONS = {"ollama": OllamaSettings, "gpu": GpuSettings, "scheduling": SchedulingSettings,
             "tenants": TenantSettings, "metrics": MetricsSettings, "curve": CurveSettings}
#: Table field -> its parser (:mod:`ollamad.configtables`).
_TABLES = {
    "runner_options": configtables.runner_options,
    "user_limits": lambda value, where: configtables.user_limits(value, where, TenantSettings()),
    "profiles": configtables.profiles,
}

RULES = [
    Rule(("backoff_max", "backoff_initial"), lambda c: c.backoff_max >= c.backoff_initial,
         "must be at least backoff_initial"),
    Rule(("ollama.restart_backoff_max", "ollama.restart_backoff_initial"),
         lambda c: c.ollama.restart_backoff_max >= c.ollama.restart_backoff_initial,
         "must be at least ollama.restart_backoff_initial"),
    Rule(("ollama.url",), lambda c: c.ollama.url.startswith(("http://", "https://")),
         "must start with http:// or https://"),
    # Ollama takes a bare number as seconds only in JSON numbers; the probes send this
    # string, and a string without a unit is a 400 for every probe (OLLAMA_KEEP_ALIVE,
    # which does take "-1", invites the mistake).
    Rule(("ollama.keep_alive",), lambda c: goduration.is_duration(c.ollama.keep_alive),
         'must be a Go duration with a unit (Ollama refuses "-1" or "300": "time: missing '
         'unit in duration"): write "30m" or "1h30m" for a time, "-1s" to keep the model '
         'loaded for ever, "0s" to unload it after each use'),
    Rule(("max_keep_alive",), lambda c: goduration.is_duration(c.max_keep_alive),
         'must be a Go duration with a unit ("1h", "-1s" for no limit)'),
    Rule(("metrics.listen",), lambda c: not c.metrics.listen or host_port(c.metrics.listen),
         'must be HOST:PORT ("127.0.0.1:9464", "[::1]:9464"), or empty for no listener'),
    Rule(("ollama.pass_environment",),
         lambda c: all(_VARIABLE_PATTERN.fullmatch(p) for p in c.ollama.pass_environment),
         'must list variable names or prefixes ending in * ("HF_HOME", "MY_CA_*")'),
    Rule(("socket",), lambda c: c.socket.startswith(("ipc://", "tcp://")),
         "must be an ipc:// or tcp:// endpoint"),
    Rule(("socket",), lambda c: "," not in c.socket,
         "must be one endpoint to bind (a comma-separated list of daemons is for clients)"),
    # CURVE without a list of clients would serve nobody (or, with an empty
    # list, any key: encryption without authentication); a list alone, nothing.
    Rule(("curve.authorized_clients", "curve.secret_key"),
         lambda c: bool(c.curve.authorized_clients) == bool(c.curve.secret_key),
         "must be set exactly when curve.secret_key is: the server's key pair and the "
         "clients it serves go together"),
]


#: An entry of ``ollama.pass_environment``: a name, or a prefix ending in ``*``
#: (:mod:`ollamad.supervisor.environment`).
_VARIABLE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")


def listen_address(config: Config) -> tuple[str, int] | None:
    """Where the Prometheus listener binds (None: off)."""
    return host_port(config.metrics.listen) if config.metrics.listen else None


def all_keys() -> list[Key]:
    return list(keys(Config, _SECTIONS))


_KEYS = {key.name: key for key in all_keys()}


def changed_keys(old: Config, new: Config) -> dict[Applies, list[str]]:
    """The keys whose value differs, grouped by when the change applies."""
    changed: dict[Applies, list[str]] = {}
    for key in _KEYS.values():
        if key.value(old) != key.value(new):
            changed.setdefault(key.spec.applies, []).append(key.name)
    for f in dataclasses.fields(Config):   # tables apply at once: the next request uses them
        if "table" in f.metadata and getattr(old, f.name) != getattr(new, f.name):
            changed.setdefault(Applies.LIVE, []).append(f.name)
    return changed


def _apply(config: Config, values: Mapping[str, Any], from_text: bool,
           where: Mapping[str, str] | str) -> Config:
    changes: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name in _TABLES:
            changes[name] = _TABLES[name](value, where)
            continue
        if name in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected a table")
            for sub, sub_value in value.items():
                key = _KEYS.get(f"{name}.{sub}")
                if key is None:
                    raise ConfigError(f"{name}.{sub}: unknown key")
                origin = where if isinstance(where, str) else where[key.name]
                sections.setdefault(name, {})[sub] = coerce(key, sub_value, from_text, origin)
            continue
        key = _KEYS.get(name)
        if key is None or key.section is not None:
            raise ConfigError(f"{name}: unknown key")
        changes[name] = coerce(key, value, from_text, where if isinstance(where, str)
                               else where[key.name])
    for name, sub_changes in sections.items():
        changes[name] = dataclasses.replace(getattr(config, name), **sub_changes)
    return dataclasses.replace(config, **changes)


def _environment_values(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Map ``OLLAMAD_*`` variables onto config keys; other names are ignored.

    Returns the values (nested like the file) and, per key, the variable it came from.
    """
    by_variable = {key.variable: key for key in _KEYS.values()}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = by_variable.get(name)
        if key is None:
            # The environment is shared with everything else on the host (the
            # stand-in's OLLAMAD_STANDIN_*, the client's OLLAMAD_SOCKET and
            # OLLAMAD_APP, CI's own variables): a name that is no setting is
            # not ours to refuse. A known name with a bad value still is.
            log.debug("ignoring %s: not an ollamad setting", name)
            continue
        if key.section:
            values.setdefault(key.section, {})[key.attribute] = text
        else:
            values[key.name] = text
        origins[key.name] = name
    return values, origins


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
    env_values, env_origins = _environment_values(env)
    config = _apply(Config(), data, False, f"in {file_path}")
    config = _apply(config, env_values, True, env_origins)
    config = _apply(config, overrides or {}, False, "from the command line")

    def origin(key: Key) -> str:
        return f" (set by {env_origins[key.name]})" if key.name in env_origins else ""

    check_ranges(config, list(_KEYS.values()), RULES, origin)
    return config


def example_toml() -> str:
    """The example config file: every key with its default, meaning and range, commented out."""
    lines = ["# ollamad configuration. Every key is optional; shown are the defaults.",
             "# Environment variables OLLAMAD_<KEY> / OLLAMAD_<SECTION>_<KEY> override",
             "# this file, and command-line flags override both."]
    lines += example_lines(all_keys())
    for f in dataclasses.fields(Config):   # tables last: in TOML, keys after a table are its own
        if "table" in f.metadata:
            lines += ["", f"# {f.metadata['table']}"] + [f"# {line}" for line in f.metadata["example"]]
    lines += ["", "# The five apps' profiles of the old in-process client (in effect: requests",
              "# name them with profile=\"...\")."] + configtables.STANDARD_PROFILES
    return "\n".join(lines) + "\n"
