"""The process tree of one Ollama server: what it uses, and the sweep of its orphans.

Ollama runs each loaded model in a child "runner" process that holds the GPU
memory. The runners have no parent-death signal: when ``ollama serve`` dies
by SIGKILL they live on, re-parented to init, holding VRAM. So while the
server lives, :class:`ProcessTree` remembers every descendant it sees (pid
and create time), and after the server is gone :meth:`ProcessTree.sweep`
kills those still alive, plus any process still in the server's session
created after the server.

A process is killed only if it is one of ours: same pid *and* same create
time as a process seen in our tree, or in our server's session and created
after our server while the server itself (same pid and create time, a
zombie included) still exists: a pid is not reused while its process
exists, so neither is the session id it gave its session. Once the server is
gone for good, its session id may belong to someone else and only the
remembered descendants are swept. An Ollama we did not start is never swept.

A tree can also be rebuilt from a record (:mod:`.record`) by a daemon that
did not start it: the root is adopted only if its create time matches.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Callable

import psutil

from ollamad.supervisor.system import System

log = logging.getLogger("ollamad.supervisor")

#: How often to look whether swept processes are gone.
SWEEP_POLL = 0.02
#: How long to wait, after SIGKILL, for a server to be gone.
KILL_WAIT = 5.0
CMDLINE_LIMIT = 200


def stop_group(system: System, pgid: int, grace: float,
               wait_gone: Callable[[float], bool]) -> None:
    """SIGTERM and SIGCONT to the group ``pgid`` leads, up to ``grace`` seconds for the leader
    to go (``wait_gone(timeout)``), then SIGKILL to the group.

    SIGCONT follows SIGTERM because a stopped process (SIGSTOP, a terminal's
    Ctrl-Z) acts on SIGTERM only once continued: without it the whole grace
    period passes for nothing. The caller makes sure the leader still exists
    (alive or a zombie), so that the group id cannot be anybody else's.
    """
    system.killpg(pgid, signal.SIGTERM)
    system.killpg(pgid, signal.SIGCONT)
    if wait_gone(grace):
        return
    log.warning("ollama[%d] did not stop within %g s; sending SIGKILL to its group", pgid, grace)
    system.killpg(pgid, signal.SIGKILL)
    if not wait_gone(KILL_WAIT):
        log.error("ollama[%d] still there %g s after SIGKILL", pgid, KILL_WAIT)


class ProcessTree:
    """One server process (``root_pid``) and its descendants."""

    def __init__(self, root_pid: int, system: System, *, root_created: float | None = None,
                 known: dict[int, float] | None = None):
        """``root_created`` and ``known``: what a record says (:mod:`.record`); then the root
        is adopted only if its create time is ``root_created``."""
        self.root_pid = root_pid
        self._system = system
        self._lock = threading.Lock()
        # descendants ever seen: pid -> create time
        self._known: dict[int, float] = dict(known or {})
        try:
            root: psutil.Process | None = psutil.Process(root_pid)
            created = root.create_time()
        except psutil.Error:
            root, created = None, 0.0
        if root_created is not None and created != root_created:
            root, created = None, root_created   # gone, or the pid is someone else's now
        self._root, self.root_created = root, created

    @property
    def root_exists(self) -> bool:
        """The server (same pid and create time) exists, maybe as a zombie: its pid is held."""
        return self._root is not None and self._root.is_running()

    def root_alive(self) -> bool:
        """The server runs (not a zombie)."""
        return self._root is not None and _alive(self._root)

    def known(self) -> dict[int, float]:
        """Every descendant seen so far: pid -> create time."""
        with self._lock:
            return dict(self._known)

    def stopped(self) -> str | None:
        """Why the server cannot run although it exists: stopped by a signal or a tracer."""
        try:
            status = self._root.status() if self._root else None
        except psutil.Error:
            return None
        if status == psutil.STATUS_STOPPED:
            return f"ollama[{self.root_pid}] is stopped (SIGSTOP?)"
        if status == psutil.STATUS_TRACING_STOP:
            return f"ollama[{self.root_pid}] is stopped by a tracer (tracing-stop)"
        return None

    def listens(self, answers: Callable[[Any], bool]) -> bool | None:
        """Whether a process of the tree has a LISTEN socket whose address ``answers`` accepts;
        None when psutil may not read some process's sockets (for our own processes, only
        where /proc is restricted)."""
        if self._root is None:
            return False
        denied = False
        for process in [self._root, *self.descendants()]:
            try:
                if any(c.status == psutil.CONN_LISTEN and answers(c.laddr)
                       for c in process.net_connections(kind="tcp")):
                    return True
            except psutil.AccessDenied:
                denied = True
            except psutil.Error:
                pass
        return None if denied else False

    def remember(self) -> None:
        """Add every live member of the tree to the known descendants, so that a sweep
        finds them by pid and create time even after the server is gone for good."""
        self.descendants()
        self._note(self._ours())

    def _note(self, processes: list[psutil.Process]) -> None:
        """Remember these processes by pid and create time."""
        with self._lock:
            for process in processes:
                try:
                    self._known.setdefault(process.pid, process.create_time())
                except psutil.Error:
                    pass

    def descendants(self) -> list[psutil.Process]:
        """The live descendants of the server, remembered for a later sweep."""
        if self._root is None:
            return []
        try:
            children = self._root.children(recursive=True)
        except psutil.Error:
            return []
        self._note(children)
        return children

    def pids(self) -> set[int]:
        """The server and all its descendants, now (for GPU memory attribution)."""
        if self._root is None or not self._root.is_running():
            return set()
        return {self.root_pid, *(child.pid for child in self.descendants())}

    def stats(self) -> dict | None:
        """RSS, CPU % since the last call, threads, runners; None when the server is gone."""
        root = self._root
        if root is None:
            return None
        try:
            with root.oneshot():
                stats = {"rss_bytes": root.memory_info().rss,
                         "cpu_percent": root.cpu_percent(None),
                         "threads": root.num_threads()}
        except psutil.Error:
            return None
        runners = []
        for child in self.descendants():
            try:
                with child.oneshot():
                    runners.append({"pid": child.pid, "rss_bytes": child.memory_info().rss,
                                    "cmdline": " ".join(child.cmdline())[:CMDLINE_LIMIT]})
            except psutil.Error:
                pass
        stats["runners"] = runners
        return stats

    def _ours(self) -> list[psutil.Process]:
        """Live processes that belong to our (dead or dying) server: see the module docstring."""
        found: dict[int, psutil.Process] = {}
        with self._lock:
            known = dict(self._known)
        for pid, created in known.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created:
                    found[pid] = process
            except psutil.Error:
                pass
        found = {**self._session_members(), **found}
        return [process for process in found.values() if _alive(process)]

    def _session_members(self) -> dict[int, psutil.Process]:
        """Members of the server's session created after it; none unless the server (same pid
        and create time) exists before and after the scan: then the session id was ours all
        along."""
        if not self.root_exists:
            return {}
        members = {}
        for process in psutil.process_iter():
            try:
                if process.pid != self.root_pid and os.getsid(process.pid) == self.root_pid \
                        and process.create_time() >= self.root_created:
                    members[process.pid] = process
            except (OSError, psutil.Error):
                pass
        return members if self.root_exists else {}

    def sweep(self, timeout: float) -> int:
        """SIGKILL what is left of our tree, wait up to ``timeout`` for it to go; the count."""
        victims = self._ours()
        for process in victims:
            log.warning("sweeping orphaned Ollama process %d (%s)", process.pid,
                        _name(process))
            self._system.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        alive = victims
        while alive and time.monotonic() < deadline:
            time.sleep(SWEEP_POLL)
            alive = [p for p in alive if _alive(p)]
        for process in alive:
            log.error("orphaned Ollama process %d did not die after SIGKILL", process.pid)
        with self._lock:
            self._known = {pid: t for pid, t in self._known.items()
                           if any(p.pid == pid for p in alive)}
        return len(victims)


def _alive(process: psutil.Process) -> bool:
    # A zombie is dead: whoever it was re-parented to will reap it.
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:CMDLINE_LIMIT] or process.name()
    except psutil.Error:
        return "?"
