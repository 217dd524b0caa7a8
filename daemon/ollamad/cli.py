"""The ``ollamad`` command line.

``serve`` runs the daemon; ``status``, ``health``, ``metrics``, ``gpu``,
``models``, ``top``, ``generate``, ``restart`` and ``pull`` talk to a running daemon
through the client library; ``stand-in`` runs the bundled Ollama stand-in;
``install-systemd`` installs the unit; ``example-config`` prints the config
file with every default; ``keygen`` makes CURVE keys for a tcp endpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from ollamad import __version__
from ollamad.config import DEFAULT_SOCKET

#: Exit status for configuration errors (sysexits EX_CONFIG); the unit does
#: not restart on it, since a restart cannot fix a config file.
EX_CONFIG = 78


def _socket_default() -> str:
    return os.environ.get("OLLAMAD_SOCKET", DEFAULT_SOCKET)


def _serve(ns: argparse.Namespace) -> int:
    from ollamad import config as config_mod
    from ollamad.logsetup import configure_logging

    overrides: dict[str, Any] = {}
    ollama: dict[str, Any] = {}
    for key, value in (("socket", ns.socket), ("workers", ns.workers), ("model", ns.model),
                       ("log_level", ns.log_level)):
        if value is not None:
            overrides[key] = value
    for key, value in (("command", ns.ollama_command), ("url", ns.ollama_url)):
        if value is not None:
            ollama[key] = value
    if ns.stand_in:
        ollama["stand_in"] = True
    if ns.external:
        ollama["mode"] = "external"
    if ollama:
        overrides["ollama"] = ollama

    def load() -> config_mod.Config:
        return config_mod.load(ns.config, overrides=overrides)

    try:
        config = load()
    except config_mod.ConfigError as exc:
        print(f"ollamad: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    configure_logging(config.log_level)

    from ollamad.app import Daemon
    from ollamad.serving.router import BindError
    from ollamad.supervisor import SupervisorError

    daemon = Daemon(config, reload_config=load)
    try:
        daemon.bind()
    except config_mod.ConfigError as exc:   # the key files, a tcp endpoint that needs CURVE
        print(f"ollamad: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except SupervisorError as exc:
        print(f"ollamad: {exc}", file=sys.stderr)
        return EX_CONFIG
    except BindError as exc:
        print(f"ollamad: {exc}", file=sys.stderr)
        return 1
    return daemon.run()


#: ``ollamad health`` exit statuses, as monitoring plugins (Nagios, Icinga) read them.
HEALTH_EXIT = {"healthy": 0, "degraded": 1, "unhealthy": 2}
HEALTH_UNKNOWN = 3
#: A usage error: a bad --socket (what argparse itself exits with).
EX_USAGE = 2


def _health_exit(result: dict[str, Any]) -> int:
    """Monitoring-plugin exit status; Ollama starting within its limit is only a warning."""
    if (result.get("ollama") or {}).get("starting"):
        return HEALTH_EXIT["degraded"]
    return HEALTH_EXIT.get(result.get("status"), HEALTH_UNKNOWN)


class UsageError(Exception):
    """A bad argument found after parsing (an endpoint that is none)."""


def _client(ns: argparse.Namespace):
    from ollamad_client import Client
    from ollamad_client._calls import check_endpoint
    try:
        check_endpoint(ns.socket)
        # CURVE keys for tcp come from $OLLAMAD_SERVER_KEY and $OLLAMAD_CLIENT_KEY.
        return Client(ns.socket, timeout=ns.timeout,
                      app=getattr(ns, "app", None) or "ollamad-cli")
    except ValueError as exc:   # not an endpoint, or bad keys
        raise UsageError(str(exc)) from None


def _query(op: str, render: Callable[[dict[str, Any]], str]) -> Callable[[argparse.Namespace], int]:
    def command(ns: argparse.Namespace) -> int:
        from ollamad.render import error_line
        from ollamad_client import OllamadError

        with _client(ns) as client:
            try:
                result = getattr(client, op)()
            except OllamadError as exc:
                print(error_line(exc), file=sys.stderr)
                return HEALTH_UNKNOWN if op == "health" else 1
        print(json.dumps(result, indent=2, sort_keys=True) if ns.json else render(result))
        if op == "health":
            return _health_exit(result)
        return 0
    return command


def _generate(ns: argparse.Namespace) -> int:
    from ollamad.render import error_line
    from ollamad_client import OllamadError

    options = dict(model=ns.model, system=ns.system, temperature=ns.temperature,
                   max_tokens=ns.max_tokens, profile=ns.profile, priority=ns.priority)
    prompt = sys.stdin.read() if ns.prompt == "-" else ns.prompt
    with _client(ns) as client:
        try:
            if ns.json:
                print(json.dumps(client.generate(prompt, **options), indent=2))
                return 0
            stream = client.stream(prompt, **options)
            for piece in stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            result = stream.result
            print(f"[{result['model']}: {result['completion_tokens']} tokens, "
                  f"{result['tokens_per_second']:.1f} tokens/s, {result['response_time']:.2f} s, "
                  f"{result['attempts']} attempt(s)]", file=sys.stderr)
            return 0
        except OllamadError as exc:
            print(error_line(exc), file=sys.stderr)
            return 1


def _restart(ns: argparse.Namespace) -> int:
    from ollamad.render import error_line
    from ollamad_client import OllamadError

    with _client(ns) as client:
        try:
            before = client.status()["ollama"].get("restarts", 0) if ns.wait else None
            answer = client.restart(ns.reason)
            final = _follow_restart(client, before, ns) if ns.wait else None
        except OllamadError as exc:
            print(error_line(exc), file=sys.stderr)
            return 1
    if ns.json:
        print(json.dumps({**answer, **({"ollama": final} if final else {})}, indent=2,
                         sort_keys=True))
    elif not ns.wait:
        print("Ollama restart requested (ollamad restart --wait follows it to RUNNING)")
    if final is not None and final.get("state") != "RUNNING":
        return 1
    return 0


def _follow_restart(client, before: int, ns: argparse.Namespace) -> dict[str, Any]:
    """Poll ``status`` until the restart has happened and Ollama is RUNNING, FATAL or
    time is up; each state change is a line (unless --json)."""
    import time

    deadline = time.monotonic() + ns.wait_timeout
    seen = None
    while True:
        ollama = client.status()["ollama"]
        if ollama.get("state") != seen and not ns.json:
            seen = ollama.get("state")
            why = ollama.get("last_reason")
            print(f"ollama {seen}" + (f": {why}" if why and seen != "RUNNING" else ""),
                  flush=True)
        restarted = ollama.get("restarts", 0) > before
        if restarted and ollama.get("state") in ("RUNNING", "FATAL"):
            return ollama
        if time.monotonic() >= deadline:
            if not ns.json:
                print(f"ollamad: Ollama is not RUNNING after {ns.wait_timeout:g} s "
                      f"(state {ollama.get('state')})", file=sys.stderr)
            return ollama
        time.sleep(0.2)


def _pull(ns: argparse.Namespace) -> int:
    """Follow a pull to its end: exit 0 on success, 1 with the cause on any failure."""
    from ollamad.render import PullProgress, error_line
    from ollamad_client import OllamadError

    view = PullProgress(sys.stdout, terminal=sys.stdout.isatty())
    with _client(ns) as client:
        try:
            with client.pull(ns.model, insecure=ns.insecure, timeout=ns.timeout) as stream:
                for progress in stream:
                    if ns.json:
                        print(json.dumps(progress), flush=True)
                    else:
                        view.show(progress)
        except OllamadError as exc:
            view.end()
            print(error_line(exc), file=sys.stderr)
            return 1
    result = stream.result or {}
    if ns.json:
        print(json.dumps(result))
    elif not result.get("allowed", True):
        print(f"note: {result.get('model')} is not in allowed_models: clients cannot use it "
              "until it is added there (and the daemon reloaded)")
    return 0


def _top(ns: argparse.Namespace) -> int:
    from ollamad import top
    with _client(ns) as client:
        return top.run(client, ns.interval)


def _stand_in(argv: list[str]) -> int:
    from ollamad.testing.standin import main as standin_main
    return standin_main(argv)


def _install_systemd(argv: list[str]) -> int:
    from ollamad.install import main as install_main
    return install_main(argv)


def _keygen(ns: argparse.Namespace) -> int:
    from ollamad import keygen
    return keygen.main(ns)


def _example_config(ns: argparse.Namespace) -> int:
    from ollamad.config import example_toml
    sys.stdout.write(example_toml())
    return 0


def _parser() -> argparse.ArgumentParser:
    from ollamad import render

    parser = argparse.ArgumentParser(prog="ollamad", description="Supervisor daemon for Ollama")
    parser.add_argument("--version", action="version", version=f"ollamad {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="TOML config file (default $OLLAMAD_CONFIG or "
                                        "/etc/ollamad/ollamad.toml)")
    serve.add_argument("--socket", help="ZeroMQ endpoint to bind (ipc://PATH or tcp://HOST:PORT)")
    serve.add_argument("--ollama-command", help="command that runs Ollama (default 'ollama serve')")
    serve.add_argument("--ollama-url", help="where Ollama listens (port 0: Ollama picks one)")
    serve.add_argument("--workers", type=int, help="request workers (default 8)")
    serve.add_argument("--model", help="default model (default llama3.1:8b)")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                       help="log level (default info, or the config's log_level)")
    serve.add_argument("--stand-in", action="store_true",
                       help="supervise the bundled stand-in instead of `ollama serve`")
    serve.add_argument("--external", action="store_true",
                       help="watch an Ollama started elsewhere instead of starting one")
    serve.set_defaults(handler=_serve)

    def client_command(name: str, help_text: str,
                       timeout_help: str = "seconds to wait") -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--socket", default=_socket_default(), help="daemon endpoint")
        sub.add_argument("--timeout", type=float, default=10.0, help=timeout_help)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        return sub

    for op, help_text, render_fn in (
            ("status", "daemon, Ollama and GPU status", render.status),
            ("health", "health; exit 0 when healthy", render.health),
            ("metrics", "request metrics", render.metrics),
            ("gpu", "GPU memory, use and Ollama's share", render.gpu),
            ("models", "models Ollama has, and which are loaded", render.models)):
        client_command(op, help_text).set_defaults(handler=_query(op, render_fn))

    generate = client_command("generate", "generate text (streams to the terminal)")
    generate.set_defaults(timeout=120.0, handler=_generate)
    generate.add_argument("prompt", help="the prompt; - reads it from standard input")
    generate.add_argument("--model", help="the model (default: the daemon's)")
    generate.add_argument("--system", help="a system prompt")
    generate.add_argument("--temperature", type=float, help="sampling temperature")
    generate.add_argument("--max-tokens", type=int, help="most tokens to generate")
    generate.add_argument("--profile", help="a profile of the daemon's config")
    generate.add_argument("--priority", choices=("interactive", "batch"),
                          help="the daemon's lane (default interactive)")
    generate.add_argument("--app", help="the app name the daemon accounts it to "
                          "(default: ollamad-cli)")

    top = client_command("top", "a live view: lanes, tenants, tokens/s, Ollama, GPU (q quits)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.set_defaults(handler=_top, timeout=5.0)

    restart = client_command("restart", "admin: restart Ollama")
    restart.add_argument("--reason", default=None, help="why (shown in status and the log)")
    restart.add_argument("--wait", action="store_true",
                         help="follow the restart until Ollama is RUNNING again")
    restart.add_argument("--wait-timeout", type=float, default=120.0,
                         help="seconds --wait waits (default 120)")
    restart.set_defaults(handler=_restart)

    pull = client_command("pull", "admin: have Ollama pull a model, following its progress",
                          "seconds to wait for each progress line (default: the daemon's "
                          "ollama.pull_stall_timeout); the whole pull has no limit")
    pull.add_argument("model", help="the model: NAME[:TAG] from Ollama's registry, or "
                                    "HOST:PORT/NAMESPACE/MODEL:TAG from another one")
    pull.add_argument("--insecure", action="store_true",
                      help="let Ollama speak plain http to the model's registry")
    # None: the daemon's ollama.pull_stall_timeout bounds each wait; no limit on the whole.
    pull.set_defaults(handler=_pull, timeout=None)

    commands.add_parser("stand-in", help="run the bundled Ollama stand-in (reads OLLAMA_HOST)",
                        add_help=False)
    commands.add_parser("install-systemd", help="install the systemd unit and friends",
                        add_help=False)
    commands.add_parser("example-config", help="print the config file with all defaults") \
        .set_defaults(handler=_example_config)

    from ollamad import keygen
    keys = commands.add_parser("keygen", help="make CURVE keys for a tcp endpoint: the "
                               "server's pair, or a client's (--client NAME)")
    keygen.add_arguments(keys)
    keys.set_defaults(handler=_keygen)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # These two own their flags entirely.
    if argv[:1] == ["stand-in"]:
        return _stand_in(argv[1:])
    if argv[:1] == ["install-systemd"]:
        return _install_systemd(argv[1:])
    ns = _parser().parse_args(argv)
    try:
        return ns.handler(ns)
    except UsageError as exc:
        print(f"ollamad: {exc}", file=sys.stderr)
        return HEALTH_UNKNOWN if ns.command == "health" else EX_USAGE
    except KeyboardInterrupt:
        return 130
