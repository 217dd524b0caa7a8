"""Start-up settings: command-line flags, `OLLAMAD_STANDIN_*` and Ollama's own variables.

Every stand-in knob is both a flag and an environment variable (the daemon's
supervisor configures a stand-in it spawns through the environment); a flag
wins over its variable. Ollama's variables (`OLLAMA_HOST`,
`OLLAMA_NUM_PARALLEL`, `OLLAMA_MAX_QUEUE`, `OLLAMA_KEEP_ALIVE`,
`OLLAMA_MAX_LOADED_MODELS`, `OLLAMA_CONTEXT_LENGTH`, `OLLAMA_LOAD_TIMEOUT`)
are read the way Ollama's envconfig reads them, including falling back to
the default on a value it cannot parse.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Mapping

from ollamad import goduration
from ollamad.testing.standin.catalog import DEFAULT_MODELS
from ollamad.testing.standin.faults import Fault, parse_spec, parse_specs

VERSION = "0.33.0"  # the release this stand-in was checked against (commit fb30760)
GIB = 1 << 30


@dataclass(frozen=True)
class Settings:
    host: str  # "" = every interface, as Go reads "host-less" addresses
    port: int
    token_delay: float
    prompt_rate: float  # prompt tokens per second; 0 = instant
    load_time: float
    startup_delay: float
    models: tuple[str, ...]
    vram: int  # bytes of pretend GPU memory, all GPUs together; 0 = no GPU
    num_parallel: int
    max_queue: int
    max_loaded_models: int
    keep_alive_ns: int
    context_length: int  # OLLAMA_CONTEXT_LENGTH; 0 = automatic (by VRAM)
    load_timeout_ns: int  # OLLAMA_LOAD_TIMEOUT: how long a load may stall
    faults: tuple[Fault, ...]
    runner_max_lifetime: float
    host_url: str  # OLLAMA_HOST as Ollama prints it in its "server config" log line


def parse_ollama_host(value: str) -> tuple[str, int, str]:
    """Ollama's envconfig.Host(): (host, port, url) for `value` ('' = default)."""
    text = value.strip()
    scheme, sep, hostport = text.partition("://")
    default_port = 11434
    if not sep:
        scheme, hostport = "http", text
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    hostport = hostport.partition("/")[0]
    host, port_text = _split_host_port(hostport)
    if host is None:
        host, port_text = hostport.strip("[]") or "127.0.0.1", str(default_port)
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        port = default_port
    shown = f"[{host}]" if ":" in host else host
    return host, port, f"{scheme}://{shown}:{port}"


def _split_host_port(hostport: str) -> tuple[str | None, str]:
    """Go's net.SplitHostPort, returning host None where Go reports an error."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1:].startswith(":"):
            return None, ""
        return hostport[1:end], hostport[end + 2:]
    host, colon, port = hostport.rpartition(":")
    if not colon or ":" in host:
        return None, ""
    return host, port


def _env_uint(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(env.get(name, "").strip())
    except ValueError:
        return default
    return value if value >= 0 else default


def _env_duration(env: Mapping[str, str], name: str, default_ns: int) -> int:
    """envconfig's KeepAlive() and LoadTimeout(): a Go duration, else whole seconds."""
    text = env.get(name, "").strip()
    if text:
        try:
            return goduration.parse_duration(text)
        except ValueError:
            try:
                return int(text) * goduration.NS_PER_S
            except ValueError:
                pass
    return default_ns


def _env_keep_alive(env: Mapping[str, str]) -> int:
    keep_alive = _env_duration(env, "OLLAMA_KEEP_ALIVE", 5 * 60 * goduration.NS_PER_S)
    return goduration.FOREVER_NS if keep_alive < 0 else keep_alive  # negative = forever


def _env_load_timeout(env: Mapping[str, str]) -> int:
    timeout = _env_duration(env, "OLLAMA_LOAD_TIMEOUT", 5 * 60 * goduration.NS_PER_S)
    return goduration.FOREVER_NS if timeout <= 0 else timeout  # zero or negative = forever


_EPILOG = """\
Ollama's own variables are read as Ollama reads them: OLLAMA_HOST (default
127.0.0.1:11434; :0 picks a free port), OLLAMA_NUM_PARALLEL (1),
OLLAMA_MAX_QUEUE (512), OLLAMA_KEEP_ALIVE (5m), OLLAMA_MAX_LOADED_MODELS (3),
OLLAMA_CONTEXT_LENGTH (0: by VRAM, 4096 below 23 GiB, 32768 from 23 GiB,
262144 from 47 GiB), OLLAMA_LOAD_TIMEOUT (5m).

fault kinds (COUNT = how many generate/chat/embed requests; none = until cleared):
  hang                 accept, then never answer (until cleared or the client leaves)
  crash_mid_stream     after_tokens=2 chunks, kill the runner, end with an error line
  runner_terminated    500 "llama-server process has terminated: exit status 2"
  busy                 503 "server busy, please try again.  maximum pending ..."
  unresponsive         every path but /_standin/ accepts and never answers
  exit                 code=1: exit at once (at start: right after binding)
  slow_start           seconds=5: start-up delay (start time only)
e.g. --fault busy:2 --fault crash_mid_stream:1:after_tokens=5 --fault exit:code=3
At run time: GET /_standin/state, POST|DELETE /_standin/faults, POST /_standin/stats/reset.
"""


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollamad stand-in",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A stand-in for `ollama serve` (no GPU, no weights): same HTTP API, "
                    "same process shape,\ndeterministic pretend answers, injectable faults.",
        epilog=_EPILOG)

    def knob(flag: str, variable: str, kind, default, help_text: str):
        raw = env.get(variable)
        try:
            value = kind(raw) if raw not in (None, "") else default
        except ValueError:
            parser.error(f"{variable}={raw!r} is not a valid {kind.__name__}")
        parser.add_argument(flag, type=kind, default=value, help=f"{help_text} (env {variable})")

    knob("--token-delay", "OLLAMAD_STANDIN_TOKEN_DELAY", float, 0.01,
         "seconds per generated token; 0 = instant")
    knob("--prompt-rate", "OLLAMAD_STANDIN_PROMPT_RATE", float, 2000.0,
         "prompt tokens evaluated per second; 0 = instant")
    knob("--load-time", "OLLAMAD_STANDIN_LOAD_TIME", float, 0.2, "seconds to load a model")
    knob("--startup-delay", "OLLAMAD_STANDIN_STARTUP_DELAY", float, 0.1,
         "seconds after binding before HTTP is answered (Ollama's GPU discovery)")
    knob("--models", "OLLAMAD_STANDIN_MODELS", str, ",".join(DEFAULT_MODELS),
         "comma-separated installed models")
    knob("--vram", "OLLAMAD_STANDIN_VRAM", int, 24 * GIB,
         "bytes of pretend GPU memory; runners hold weights plus num_ctx x parallel of KV "
         "cache, what does not fit goes to the CPU and runs slower; 0 = no GPU")
    knob("--runner-max-lifetime", "OLLAMAD_STANDIN_RUNNER_MAX_LIFETIME", float, 1800.0,
         "seconds after which a runner exits by itself (a leak safety net)")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND[:COUNT][:P=V]",
                        help="inject a fault (repeatable; env OLLAMAD_STANDIN_FAULTS, "
                             "comma-separated)")
    return parser


def load(argv: list[str], env: Mapping[str, str]) -> Settings:
    """Settings from flags and environment; exits with status 2 on a bad value."""
    parser = _parser(env)
    args = parser.parse_args(argv)
    try:
        faults = parse_specs(env.get("OLLAMAD_STANDIN_FAULTS", ""))
        faults += [parse_spec(spec) for spec in args.fault]
    except ValueError as exc:
        parser.error(str(exc))
    for name in ("token_delay", "prompt_rate", "load_time", "startup_delay", "runner_max_lifetime",
                 "vram"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    models = tuple(name.strip() for name in args.models.split(",") if name.strip())
    host, port, url = parse_ollama_host(env.get("OLLAMA_HOST", ""))
    return Settings(
        host=host,
        port=port,
        host_url=url,
        token_delay=args.token_delay,
        prompt_rate=args.prompt_rate,
        load_time=args.load_time,
        startup_delay=args.startup_delay,
        models=models,
        vram=args.vram,
        num_parallel=_env_uint(env, "OLLAMA_NUM_PARALLEL", 0) or 1,
        max_queue=_env_uint(env, "OLLAMA_MAX_QUEUE", 512),
        max_loaded_models=_env_uint(env, "OLLAMA_MAX_LOADED_MODELS", 0) or 3,
        keep_alive_ns=_env_keep_alive(env),
        context_length=_env_uint(env, "OLLAMA_CONTEXT_LENGTH", 0),
        load_timeout_ns=_env_load_timeout(env),
        faults=tuple(faults),
        runner_max_lifetime=args.runner_max_lifetime,
    )
