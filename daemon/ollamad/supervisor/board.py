"""What the supervisor thread shares with the rest of the daemon, all under one lock.

Other threads post requests here (stop, restart, probe now, a reloaded
config) and read the state and the report; the supervisor thread
(:mod:`.lifecycle`) takes the requests in its waits
(:meth:`Board.check_events`) and writes the state and the report. Every
field is read and written under ``cond``, and every state change notifies
it, which is what :meth:`Board.wait_running` waits for.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable

from ollamad.config import Config
from ollamad.supervisor.modes import OllamaServer
from ollamad.supervisor.policy import RestartPolicy
from ollamad.supervisor.report import Report
from ollamad.supervisor.states import State, check_transition
from ollamad.supervisor.system import System
from ollamad.supervisor.waiting import Exited, RestartRequested, StopRequested

log = logging.getLogger("ollamad.supervisor")

#: States in which no server runs: nothing is loaded, there is no process to describe.
_GONE = (State.EXITED, State.STOPPED, State.FATAL, State.BACKOFF)


class Board:
    def __init__(self, config: Config, system: System, ollama: OllamaServer,
                 on_change: Callable[[dict], None] | None):
        self.cond = threading.Condition()
        self._system, self._ollama, self._on_change = system, ollama, on_change
        self.config = config
        # Requests from other threads ...
        self.stop_requested = False
        self.stop_deadline = math.inf
        self.restart_reason: str | None = None
        #: From a restart request until the new server is STARTING: requests
        #: must wait for the new one, not slip through to the old one.
        self.restart_pending = False
        self.probe_now = False
        # ... and what the supervisor thread found out.
        self.runs = 0   # starts of Ollama (or, in external mode, of watching it)
        self._state = State.STOPPED
        self.thread_failed = False
        self.policy = RestartPolicy(config.ollama)
        self.report = Report()

    @property
    def state(self) -> State:
        with self.cond:
            return self._state

    def set_state(self, new: State, reason: str | None = None) -> None:
        """Change state (only as :data:`~.states.TRANSITIONS` allow), log it, tell on_change."""
        with self.cond:
            old = self._state
            check_transition(old, new)
            self._state = new
            if reason:
                self.report.last_reason = reason
            if new in _GONE:
                self.report.gone()
            self.cond.notify_all()
            snapshot = self._snapshot_locked()
        log.log(logging.WARNING if new in (State.EXITED, State.FATAL) else logging.INFO,
                "ollama: %s -> %s%s", old, new, f" ({reason})" if reason else "")
        if self._on_change:
            try:
                self._on_change(snapshot)
            except Exception:
                log.exception("on_change callback failed")

    def snapshot(self) -> dict[str, Any]:
        with self.cond:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> dict[str, Any]:
        now = self._system.monotonic()
        ollama = self._ollama
        return self.report.snapshot(mode=ollama.mode, state=self._state.value, pid=ollama.pid,
                                    url=ollama.url, command=ollama.command, now=now,
                                    restarts_in_window=self.policy.failures_in_window(now))

    def wait_running(self, deadline: float) -> bool:
        """Block until RUNNING: True; False at ``deadline`` (monotonic), FATAL or stop.

        A requested restart counts as not running from the moment it is requested.
        """
        with self.cond:
            while self._state is not State.RUNNING or self.restart_pending:
                if self._state is State.FATAL or self.stop_requested or self.thread_failed:
                    return False
                remaining = deadline - self._system.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True

    def unavailable_reason(self) -> str | None:
        """Why Ollama cannot come back without an operator: FATAL, stopping, or a dead thread."""
        with self.cond:
            if self.thread_failed:
                return self.report.fatal_reason or "the supervisor failed"
            if self.stop_requested:
                return "ollamad is stopping Ollama"
            if self._state is State.FATAL:
                return (f"Ollama is FATAL ({self.report.fatal_reason}); "
                        "an admin can run `ollamad restart` once the cause is fixed")
        return None

    def check_events(self) -> None:
        """In the supervisor thread's waits: raise what must be handled now (:mod:`.waiting`)."""
        with self.cond:
            if self.stop_requested:
                raise StopRequested()
            if self.restart_reason is not None:
                reason, self.restart_reason = self.restart_reason, None
                raise RestartRequested(reason)
        if self._ollama.has_exited():
            raise Exited()
