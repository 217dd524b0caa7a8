"""External mode: an Ollama someone else started (a distribution's ``ollama.service``).

We probe it exactly like one we spawned and report what we see, including
its process when we can find it: the process listening on the URL's port.
Finding another user's socket owner may need privileges; without them the
process is simply not reported. We never signal it. The only way we restart
it is ``ollama.restart_command`` (for example ``systemctl restart ollama``),
run with a time-out.
"""

from __future__ import annotations

import logging
import os
import shlex

import psutil

from ollamad.notify import child_environment
from ollamad.supervisor.process import connect_url, host_port
from ollamad.supervisor.proctree import ProcessTree
from ollamad.supervisor.system import System

log = logging.getLogger("ollamad.supervisor")


def _listens_on(connection, port: int) -> bool:
    return (connection.status == psutil.CONN_LISTEN and bool(connection.laddr)
            and connection.laddr.port == port)


class ListenerFinder:
    """Finds the pid listening on a URL's port, re-checking the last one found before scanning."""

    def __init__(self, url: str):
        self.port = host_port(url)[1]
        self._last: psutil.Process | None = None
        self._denied_logged = False

    def find(self) -> int | None:
        if self._last is not None:
            try:
                if self._last.is_running() and any(
                        _listens_on(c, self.port) for c in self._last.net_connections(kind="tcp")):
                    return self._last.pid
            except psutil.Error:
                pass
            self._last = None
        try:
            connections = psutil.net_connections(kind="tcp")
        except psutil.AccessDenied:
            if not self._denied_logged:
                log.info("cannot list sockets (no privilege): the external Ollama's process "
                         "is not reported")
                self._denied_logged = True
            return None
        for connection in connections:
            if connection.pid and _listens_on(connection, self.port):
                try:
                    self._last = psutil.Process(connection.pid)
                except psutil.Error:
                    continue
                return connection.pid
        return None


class ExternalOllama:
    """The Ollama at a configured URL, and its process tree when we can find it."""

    def __init__(self, url: str, system: System):
        self.url = connect_url(url)
        self._finder = ListenerFinder(url)
        self._system = system
        self.tree: ProcessTree | None = None

    def find_tree(self) -> ProcessTree | None:
        """Look for the listening process again; keep the tree while it is the same process."""
        pid = self._finder.find()
        if pid is None:
            self.tree = None
        elif self.tree is None or self.tree.root_pid != pid:
            self.tree = ProcessTree(pid, self._system)
        return self.tree


def run_restart_command(system: System, command: str, timeout: float) -> str | None:
    """Run ``ollama.restart_command``; None when it succeeded, else what went wrong."""
    try:
        code, output = system.run(shlex.split(command), child_environment(os.environ), timeout)
    except (OSError, ValueError) as exc:
        return f"restart command {command!r} could not run: {exc}"
    if output.strip():
        log.info("restart command output: %s", output.strip())
    if code is None:
        return f"restart command {command!r} timed out after {timeout:g} s"
    if code != 0:
        return f"restart command {command!r} failed with exit code {code}"
    return None
