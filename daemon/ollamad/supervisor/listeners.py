"""Who listens on Ollama's port: a process of the tree we watch, or somebody else.

Two views, both through psutil and both without privileges for our own
processes: a process's own sockets (``Process.net_connections``), and the
host's list of sockets (``psutil.net_connections``), which names the owner
only of processes we may inspect (another user's socket comes with pid
None; some systems refuse the whole list).

A socket listening on ``LADDR`` takes connections to ``HOST:PORT`` when the
ports are equal and the address is HOST or a wildcard (``0.0.0.0`` for
IPv4; ``[::]`` for both, Go listens dual-stack there).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import psutil

from ollamad.supervisor.process import host_port
from ollamad.supervisor.proctree import CMDLINE_LIMIT, ProcessTree
from ollamad.supervisor.system import System

log = logging.getLogger("ollamad.supervisor")

#: What an operator can do about a port that someone else holds.
PORT_REMEDY = ("Stop that process (for Ollama's own service: `systemctl disable --now ollama`), "
               "or set ollama.url to port 0 (http://127.0.0.1:0) so that the Ollama ollamad "
               "starts takes a free port; `ollamad restart` tries again")


def takes_connections(laddr: Any, host: str, port: int) -> bool:
    """Whether a socket listening on ``laddr`` takes connections to ``host:port``."""
    if not laddr or laddr.port != port:
        return False
    try:
        target, listening = ipaddress.ip_address(host), ipaddress.ip_address(laddr.ip)
    except ValueError:
        return True   # a host name: any address may be it
    if listening.is_unspecified:
        return listening.version == 6 or target.version == 4
    return listening == target


def _listening_pids(host: str, port: int) -> list[int | None] | None:
    """The pids listening for ``host:port`` (None for an owner we may not see); None when
    the system refuses the list."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    return [c.pid for c in connections
            if c.status == psutil.CONN_LISTEN and takes_connections(c.laddr, host, port)]


def describe_pid(pid: int | None) -> str:
    if pid is None:
        return "a process we may not inspect (another user's: `sudo ss -ltnp` names it)"
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())[:CMDLINE_LIMIT] or process.name()
    except psutil.AccessDenied:
        command = "command line not readable"
    except psutil.NoSuchProcess:
        command = "gone since"
    return f"pid {pid} ({command})"


def port_holders(url: str) -> list[str]:
    """Who listens on ``url``'s port, each as "pid N (command line)"; empty when nobody visible."""
    host, port = host_port(url)
    pids = _listening_pids(host, port)
    if pids is None:
        return ["a process we cannot name (this system does not list sockets to us)"]
    return [describe_pid(pid) for pid in dict.fromkeys(pids)]


def foreign_listener(url: str, tree: ProcessTree) -> str | None:
    """Why the server answering at ``url`` is not ours; None when a process of ``tree``
    listens there (or we may not read our own tree's sockets: then there is no proof either
    way, and it is logged)."""
    host, port = host_port(url)
    ours = tree.listens(lambda laddr: takes_connections(laddr, host, port))
    if ours is None:
        log.warning("cannot read the sockets of ollama[%d]: not checking that it is the one "
                    "answering on port %d", tree.root_pid, port)
    if ours is not False:
        return None
    holders = port_holders(url) or ["a process we cannot see"]
    return (f"port {port} is answered by another process, not by the ollama[{tree.root_pid}] "
            f"ollamad started: {', '.join(holders)}. {PORT_REMEDY}")


class ListenerFinder:
    """Finds the pid listening on a URL's port, re-checking the last one found before scanning."""

    def __init__(self, url: str, system: System):
        self.host, self.port = host_port(url)
        self._system = system
        self._last: ProcessTree | None = None
        self._denied_logged = False

    def _takes(self, laddr: Any) -> bool:
        return takes_connections(laddr, self.host, self.port)

    def find(self) -> ProcessTree | None:
        """The listener's tree: the last one found while it still listens, else a new one."""
        if self._last is not None and self._last.listens(self._takes):
            return self._last
        self._last = None
        pids = _listening_pids(self.host, self.port)
        if pids is None and not self._denied_logged:
            log.info("cannot list sockets (no privilege): the external Ollama's process "
                     "is not reported")
            self._denied_logged = True
        for pid in pids or []:
            tree = ProcessTree(pid, self._system) if pid is not None else None
            if tree is not None and tree.root_exists:
                self._last = tree
                return tree
        return None
