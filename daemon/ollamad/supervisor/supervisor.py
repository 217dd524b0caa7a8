"""The :class:`Supervisor`: keeps one Ollama running, or watches one that someone else runs.

This is its face for the rest of the daemon. Behind it:

* one object per ``ollama.mode`` (:mod:`.modes`): the ``ollama serve`` we
  spawn (:mod:`.spawned`) or the one somebody else runs (:mod:`.external`);
* one thread, the state machine (:mod:`.lifecycle`, states in
  :mod:`.states`), the only one that acts;
* the :class:`~.board.Board` the thread shares with everyone else, under one
  lock: other threads only read (``state``, ``url``,
  :meth:`~Supervisor.snapshot`, :meth:`~Supervisor.wait_running`) or post
  requests (restart, probe now, stop, reconfigure) that wake the thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ollamad.config import Config
from ollamad.supervisor.board import Board
from ollamad.supervisor.external import ExternalOllama
from ollamad.supervisor.health import Health
from ollamad.supervisor.lifecycle import Lifecycle
from ollamad.supervisor.modes import OllamaServer
from ollamad.supervisor.process import check_command, launch_changes
from ollamad.supervisor.spawned import SpawnedOllama
from ollamad.supervisor.states import State, SupervisorError
from ollamad.supervisor.system import System
from ollamad.supervisor.waiting import Waiter

log = logging.getLogger("ollamad.supervisor")


class Supervisor:
    def __init__(self, config: Config, *,
                 progress: Callable[[], tuple[int, float | None]] = lambda: (0, None),
                 loading: Callable[[str], bool] = lambda model: False,
                 system: System | None = None,
                 on_change: Callable[[dict], None] | None = None):
        self._system = system or System()
        self._waiter = Waiter(self._system, lambda: self._board.check_events(),
                              lambda: self._ollama.exit_watch())
        # The one place that asks for the mode (it changes only with the daemon).
        self._ollama: OllamaServer = (
            ExternalOllama(self._system) if config.ollama.mode == "external"
            else SpawnedOllama(config, self._system, self._waiter.wake))
        self._board = Board(config, self._system, self._ollama, on_change)
        self._lifecycle = Lifecycle(self._board, self._ollama, self._waiter,
                                    Health(progress, loading), self._system)
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> State:
        return self._board.state

    @property
    def url(self) -> str | None:
        """Ollama's base URL, once known (for port 0, once the server logged its port)."""
        return self._ollama.url

    @property
    def run_id(self) -> int:
        """Changes with every (re)start of Ollama: what was known of the last one is stale."""
        with self._board.cond:
            return self._board.runs

    def check_command(self) -> None:
        """Raise :class:`SupervisorError` (naming the remedies) when the command cannot run."""
        check_command(self._board.config.ollama)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Supervisor.start() called twice")
        self._thread = threading.Thread(target=self._lifecycle.run, name="ollamad-supervisor",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop Ollama (spawn mode) and the supervisor thread within about ``timeout`` seconds.

        The grace period after SIGTERM is ``stop_grace``, shortened to fit ``timeout``.
        """
        board = self._board
        with board.cond:
            board.stop_requested = True
            board.stop_deadline = self._system.monotonic() + timeout
            board.cond.notify_all()
        self._waiter.wake()
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the supervisor did not finish stopping within %g s", timeout)
        else:
            self._waiter.wake_pipe.close()

    def wait_running(self, deadline: float) -> bool:
        """Block until RUNNING: True; False at ``deadline`` (time.monotonic()), FATAL or stop.

        A requested restart counts as not running from the moment it is requested.
        """
        return self._board.wait_running(deadline)

    def unavailable_reason(self) -> str | None:
        """Why Ollama cannot come back without an operator: FATAL, stopping, or a dead supervisor."""
        return self._board.unavailable_reason()

    def thread_alive(self) -> bool:
        """The supervisor thread runs (or has not been started), and has not failed."""
        board = self._board
        with board.cond:
            failed, stopping = board.thread_failed, board.stop_requested
        return not failed and (self._thread is None or self._thread.is_alive() or stopping)

    def request_restart(self, reason: str) -> None:
        """Restart Ollama now, whatever its state (FATAL included). Returns at once."""
        board = self._board
        refusal = self._ollama.cannot_restart(board.config.ollama)
        if refusal:
            raise SupervisorError(f"cannot restart Ollama: {refusal}")
        with board.cond:
            if board.stop_requested:
                raise SupervisorError("cannot restart Ollama: the supervisor is stopping")
            board.restart_reason = f"restart requested: {reason}"
            board.restart_pending = True
        self._waiter.wake()

    def report_connection_failure(self) -> None:
        """A worker could not connect: probe ``GET /`` now rather than at the next interval."""
        with self._board.cond:
            self._board.probe_now = True
        self._waiter.wake()

    def reconfigure(self, config: Config) -> list[str]:
        """Apply a reloaded config; probe, hang, back-off and warm-up settings apply now.

        Returns the changed keys that need a restart of Ollama (``ollama.command``,
        ``ollama.stand_in``, ``ollama.url``, ``ollama.num_parallel``, and ``workers``
        when it sets OLLAMA_NUM_PARALLEL); they apply at its next (re)start.
        ``ollama.mode`` needs a restart of the daemon. A reload also leaves FATAL.
        """
        board = self._board
        pending = launch_changes(board.config, config)
        with board.cond:
            board.config = config
            board.policy.settings = config.ollama
            if board.state is State.FATAL:
                board.restart_reason = "configuration reloaded"
        self._waiter.wake()
        return pending

    def ollama_pids(self) -> set[int]:
        """Ollama's server and all its descendants now (for attributing GPU memory)."""
        tree = self._ollama.tree
        return tree.pids() if tree else set()

    def snapshot(self) -> dict[str, Any]:
        return self._board.snapshot()
