"""One spawned ``ollama serve``: launching it, reading its log, watching it exit, stopping it.

The server is started in a new session, so it leads its own process group
and session and its runners stay in both. It is never reaped before what it
leaves behind is swept: an unreaped (zombie) leader keeps its pid, so the
group and session ids we signal and scan cannot belong to anyone else.

What the server says on stderr (and stdout) is logged line by line under the
``ollamad.ollama`` logger as ``ollama[PID]: ...``, and two lines are read for
meaning: ``Listening on HOST:PORT`` gives the port when it was chosen by
Ollama (port 0; HOST may be an IPv6 literal, ``[::1]``), and an ``Error:
...`` line (such as ``bind: address already in use``) becomes the reason the
server failed.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from typing import Callable, Mapping
from urllib.parse import urlsplit

from ollamad.config import Config, OllamaSettings
from ollamad.supervisor import environment
from ollamad.supervisor.proctree import KILL_WAIT, ProcessTree, stop_group
from ollamad.supervisor.states import SupervisorError
from ollamad.supervisor.system import System

log = logging.getLogger("ollamad.supervisor")
ollama_log = logging.getLogger("ollamad.ollama")

MAX_LOG_LINE = 64 * 1024
#: How long to wait for the log reader to drain the last lines after an exit.
READER_JOIN = 1.0
#: How often to look for an exit where there is no pidfd.
EXIT_POLL = 0.05

# Greedy up to the last colon: the host may be an IPv6 literal ("[::1]").
_LISTENING = re.compile(r"Listening on \S+:(\d+)\b")
_LEVEL = re.compile(r"\blevel=(\w+)")
_LEVELS = {"ERROR": logging.ERROR, "WARN": logging.WARNING, "WARNING": logging.WARNING,
           "DEBUG": logging.DEBUG}
_WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
_REMEDIES = ("Install Ollama (https://ollama.com/download) or run `ollamad serve --stand-in` "
             "to supervise the bundled stand-in instead.")


def command_argv(settings: OllamaSettings) -> list[str]:
    if settings.stand_in:
        return [sys.executable, "-m", "ollamad", "stand-in"]
    try:
        return shlex.split(settings.command)
    except ValueError as exc:
        raise SupervisorError(
            f"cannot start Ollama: ollama.command {settings.command!r}: {exc}") from None


def _missing(program: str) -> str | None:
    """Why ``program`` cannot be executed, or None when it can."""
    if os.sep in program:
        return None if os.access(program, os.X_OK) and os.path.isfile(program) \
            else f"{program!r} does not exist or is not executable"
    return None if shutil.which(program) else f"{program!r} was not found on PATH"


def check_command(settings: OllamaSettings) -> None:
    """Raise :class:`SupervisorError` with both remedies when the command cannot run."""
    if settings.mode == "external":
        if settings.restart_command:
            try:
                argv = shlex.split(settings.restart_command)
                problem = _missing(argv[0]) if argv else "is empty"
            except ValueError as exc:
                problem = str(exc)
            if problem:
                raise SupervisorError(f"cannot restart Ollama: ollama.restart_command: {problem}")
        return
    argv = command_argv(settings)
    if not argv:
        raise SupervisorError(f"cannot start Ollama: ollama.command is empty. {_REMEDIES}")
    problem = _missing(argv[0])
    if problem:
        raise SupervisorError(f"cannot start Ollama: {problem}. {_REMEDIES}")


def parallel_slots(config: Config) -> int:
    """OLLAMA_NUM_PARALLEL: ``ollama.num_parallel``, or one slot per worker plus one that
    keeps the inference probe from queueing behind user work (a probe stuck behind
    eight long prompts looks exactly like a hang)."""
    return config.ollama.num_parallel or config.workers + 1


def child_env(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a spawned server: the allowed part of ours
    (:mod:`.environment`), plus the shape the daemon sets: ``OLLAMA_HOST``,
    ``OLLAMA_NUM_PARALLEL``, ``OLLAMA_LOAD_TIMEOUT`` and ``OLLAMA_CONTEXT_LENGTH``
    (the KV cache is context × slots)."""
    env = environment.filtered(environ, config.ollama.pass_environment,
                               stand_in=config.ollama.stand_in)
    env["OLLAMA_HOST"] = listen_address(config.ollama.url)
    env["OLLAMA_NUM_PARALLEL"] = str(parallel_slots(config))
    env["OLLAMA_LOAD_TIMEOUT"] = f"{config.ollama.load_timeout:g}s"
    if config.ollama.context_length:
        env["OLLAMA_CONTEXT_LENGTH"] = str(config.ollama.context_length)
    else:   # Ollama's own automatic size
        env.pop("OLLAMA_CONTEXT_LENGTH", None)
    return env


#: Settings that shape the server's command line or environment: they take effect when it
#: is next (re)started.
LAUNCH_KEYS = ("command", "stand_in", "url", "mode", "num_parallel", "context_length",
               "load_timeout", "pass_environment")


def launch_changes(old: Config, new: Config) -> list[str]:
    """The changed settings that only a restart of Ollama applies (``workers`` counts when it
    sets OLLAMA_NUM_PARALLEL)."""
    changed = [f"ollama.{key}" for key in LAUNCH_KEYS
               if getattr(old.ollama, key) != getattr(new.ollama, key)]
    if parallel_slots(old) != parallel_slots(new) and "ollama.num_parallel" not in changed:
        changed.append("workers")
    return changed


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def listen_address(url: str) -> str:
    """``OLLAMA_HOST`` for a configured URL: ``http://127.0.0.1:0`` -> ``127.0.0.1:0``."""
    host, port = host_port(url)
    return f"{_bracket(host or '127.0.0.1')}:{port}"


def connect_url(url: str, port: int | None = None) -> str | None:
    """Where to reach a server configured at ``url`` (listening on ``port`` if given).

    None while the port is still unknown (0 and not yet logged). A wildcard
    listen host is reached over loopback.
    """
    host, configured_port = host_port(url)
    port = configured_port if port is None else port
    if port == 0:
        return None
    return f"{urlsplit(url).scheme}://{_bracket(_WILDCARD_HOSTS.get(host, host))}:{port}"


def listening_port(line: str) -> int | None:
    """The port of a ``Listening on HOST:PORT (version X)`` log line, None for other lines."""
    found = _LISTENING.search(line)
    return int(found.group(1)) if found else None


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return f"killed by signal {-returncode} ({name})"
    return f"exit code {returncode}"


def spawn_server(system: System, config: Config, on_news: Callable[[], None]) -> "ServerProcess":
    """Start the configured server; :class:`SupervisorError` (with remedies) when it cannot."""
    try:
        return ServerProcess(system, command_argv(config.ollama), child_env(config, os.environ),
                             config.ollama.url, on_news)
    except OSError as exc:
        check_command(config.ollama)   # the clearer message, when it applies
        raise SupervisorError(f"cannot start Ollama: {exc}") from None


class ServerProcess:
    """A running (or just exited, not yet reaped) ``ollama serve`` that we started."""

    def __init__(self, system: System, argv: list[str], env: Mapping[str, str],
                 configured_url: str, on_news: Callable[[], None]):
        self._system = system
        self.configured_url = configured_url
        self._on_news = on_news
        self.proc = system.spawn(argv, env)
        self.pid = self.proc.pid
        self.started_at = system.monotonic()
        self.pidfd = system.pidfd_open(self.pid)
        self.tree = ProcessTree(self.pid, system)
        #: Base URL once known (at once for a fixed port, from the log for port 0).
        self.url: str | None = connect_url(configured_url)
        #: The last ``Error: ...`` line the server printed.
        self.error_line: str | None = None
        self._reader = threading.Thread(target=self._read_log, name=f"ollama-log-{self.pid}",
                                        daemon=True)
        self._reader.start()

    # -- the log ---------------------------------------------------------------
    def _read_log(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        with stream:
            for raw in iter(lambda: stream.readline(MAX_LOG_LINE), b""):
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self._learn(line)

    def _learn(self, line: str) -> None:
        if line.startswith("Error:"):
            self.error_line, level = line, logging.ERROR
        elif line.startswith("[GIN]"):
            # One access-log line per request: the daemon's own metrics say
            # the same, so keep them out of the journal unless debugging.
            level = logging.DEBUG
        else:
            found = _LEVEL.search(line)
            level = _LEVELS.get(found.group(1).upper(), logging.INFO) if found else logging.INFO
        ollama_log.log(level, "ollama[%d]: %s", self.pid, line)
        port = listening_port(line)
        if port is not None and self.url is None:
            self.url = connect_url(self.configured_url, port)
            self._on_news()

    # -- exit --------------------------------------------------------------------
    def has_exited(self) -> bool:
        """Exited (a zombie, not reaped yet) or reaped already."""
        if self.proc.returncode is not None:
            return True
        if self.pidfd is not None:
            return bool(self._system.wait_readable([self.pidfd], 0))
        return self._system.has_exited(self.pid)

    def wait_exit(self, timeout: float) -> bool:
        deadline = self._system.monotonic() + timeout
        while not self.has_exited():
            remaining = deadline - self._system.monotonic()
            if remaining <= 0:
                return False
            if self.pidfd is not None:
                self._system.wait_readable([self.pidfd], remaining)
            else:
                self._system.wait_readable([], min(remaining, EXIT_POLL))
        return True

    def stop(self, grace: float) -> None:
        """:func:`~.proctree.stop_group` unless it exited already. Not reaped."""
        if not self.has_exited():
            stop_group(self._system, self.pid, grace, self.wait_exit)

    def shut_down(self, grace: float, sweep_timeout: float) -> tuple[int | None, int]:
        """:meth:`stop` (if still running), sweep the orphans, then reap.

        Returns (returncode, or None if it could not be reaped; processes swept).
        """
        self.stop(grace)
        swept = self.tree.sweep(sweep_timeout)
        try:
            returncode: int | None = self.proc.wait(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            returncode = None
        self._reader.join(READER_JOIN)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return returncode, swept

    @property
    def port_taken(self) -> bool:
        """It could not listen: another process holds the port."""
        return bool(self.error_line) and "address already in use" in self.error_line

    def exit_reason(self, returncode: int | None) -> str:
        """Why it ended, for operators: the exit status and the server's last ``Error:`` line."""
        reason = "exited" if returncode is None else describe_exit(returncode)
        return f"{reason}: {self.error_line}" if self.error_line else reason
