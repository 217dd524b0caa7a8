"""The supervisor thread: the state machine that starts, probes, restarts and stops Ollama.

It is the same for both modes: what differs lives in the mode's object
(:class:`~.modes.OllamaServer`). It waits in one place (:mod:`.waiting`),
so an exit is seen the moment it happens, no wait lacks a time-out, and a
hung probe cannot hang the supervisor; what it shares with other threads
is on the :class:`~.board.Board`.

STARTING ends in RUNNING once ``GET /`` answers 200 from our own server: in
spawn mode the port's listening socket must be our tree's, else FATAL (a
port another process holds stays held). Restart triggers while RUNNING:

1. the process exits (spawn mode: its pidfd);
2. ``GET /`` fails 3 times in a row (:mod:`.health`);
3. a probe fails and the server is stopped (SIGSTOP): at once, since a
   stopped process answers nothing until it is continued;
4. Ollama is hung: the inference probe timed out and no in-flight
   generation has made progress for ``hang_after`` seconds, or none is in
   flight. A long generation that keeps making progress is never killed
   (the rule: :mod:`.probes`).

After a failure the restart policy (:mod:`.policy`) restarts at once, backs
off, or gives up (FATAL). In external mode the same probes run; a failure
restarts Ollama only through ``ollama.restart_command``, and without one is
only reported.
"""

from __future__ import annotations

import logging

from ollamad.config import Config
from ollamad.supervisor import probes
from ollamad.supervisor.board import Board
from ollamad.supervisor.health import Health, Verdict, probe_record, warm_up
from ollamad.supervisor.modes import Ended, OllamaServer
from ollamad.supervisor.probes import ProbeResult
from ollamad.supervisor.states import State, SupervisorError
from ollamad.supervisor.system import System
from ollamad.supervisor.waiting import Exited, RestartRequested, StopRequested, Waiter

log = logging.getLogger("ollamad.supervisor")

#: How often ``GET /`` is tried while waiting for a start to finish.
STARTUP_POLL = 0.02
#: Of a stop() time-out, what is kept for SIGKILL and the sweep after the grace period.
KILL_MARGIN = 1.0
#: How long an idle wait (FATAL) sleeps before looking again; any request wakes it sooner.
IDLE_WAIT = 3600.0


class Lifecycle:
    def __init__(self, board: Board, ollama: OllamaServer, waiter: Waiter, health: Health,
                 system: System):
        self._board, self._ollama, self._waiter = board, ollama, waiter
        self._health, self._system = health, system
        self._backoff_until = 0.0
        self._hang_reported = False
        #: What the last failure was, for the restart it leads to (Report.restart_causes).
        self._cause = "unknown"

    @property
    def _config(self) -> Config:
        return self._board.config   # replaced whole by reconfigure(): one read is consistent

    def _set_state(self, new: State, reason: str | None = None) -> None:
        self._board.set_state(new, reason)

    def _alive(self, url: str) -> ProbeResult:
        timeout = self._config.ollama.probe_timeout
        return self._waiter.wait_for(lambda: probes.alive(url, timeout), timeout,
                                     ProbeResult.timeout(timeout))

    def run(self) -> None:
        """The thread's body: until stop() (or a bug, which marks the thread failed)."""
        handlers = {State.STARTING: self._await_ready, State.RUNNING: self._watch,
                    State.BACKOFF: self._sit_out_backoff, State.FATAL: self._sit_fatal,
                    State.EXITED: self._wait_for_return}
        board = self._board
        try:
            self._ollama.stop_previous(self._config.ollama.stop_grace)
            self._launch(restart=False)
            while True:
                try:
                    handlers[board.state]()
                except Exited:
                    self._on_exit()
                except RestartRequested as request:
                    self._restart(request.reason)
        except StopRequested:
            pass
        except Exception as exc:
            log.exception("the supervisor failed")
            with board.cond:
                board.thread_failed = True
                board.report.fatal_reason = f"the supervisor failed: {exc!r}"
        finally:
            self._shut_down()

    # -- STARTING and RUNNING -------------------------------------------------------
    def _launch(self, restart: bool, reason: str | None = None) -> None:
        """-> STARTING: spawn the server, or (external mode, restarting) run the restart command."""
        board = self._board
        with board.cond:
            if board.stop_requested:
                raise StopRequested()
            if restart:
                board.report.restarts += 1
                causes = board.report.restart_causes
                causes[self._cause] = causes.get(self._cause, 0) + 1
            board.restart_pending = False
            board.runs += 1
        self._set_state(State.STARTING, reason)
        self._hang_reported = False
        try:
            problem = self._ollama.launch(self._config, restart, self._waiter.wait_for)
        except SupervisorError as error:
            self._exited(str(error), permanent=True)
            return
        with board.cond:
            board.report.up_since = self._ollama.started_at
            if problem:
                board.report.last_reason = problem

    def _await_ready(self) -> None:
        """STARTING: wait for ``GET /`` to answer 200, up to ``startup_timeout``."""
        timeout = self._config.ollama.startup_timeout
        started = self._ollama.started_at
        result: ProbeResult | None = None
        while True:
            url = self._ollama.url
            if url:
                result = self._alive(url)
                self._set_probe(probe_record(result))
                self._cause = "startup"
                if result.ok:
                    # Not necessarily from our server: another process may hold the port.
                    foreign = self._ollama.foreign_listener()
                    if foreign:
                        self._failed_running(foreign, permanent=True)
                    else:
                        self._became_running(url)
                    return
                stopped = self._ollama.stopped()
                if stopped:
                    self._failed_running(stopped)
                    return
            now = self._system.monotonic()
            if now >= started + timeout:
                self._cause = "startup"
                last = f" (last: {result.error})" if result else " (it never logged its port)"
                self._failed_running(f"did not answer GET / within {timeout:g} s{last}")
                return
            self._waiter.pause(min(now + STARTUP_POLL, started + timeout))

    def _became_running(self, url: str) -> None:
        timeout = self._config.ollama.probe_timeout
        found = self._waiter.wait_for(lambda: probes.version(url, timeout), timeout, None)
        with self._board.cond:
            self._board.report.version = found
        self._set_state(State.RUNNING)
        config = self._config
        # In the background: liveness probes go on while a big model loads.
        self._health.reset(self._waiter.start(lambda: warm_up(url, config))
                           if config.ollama.warm_model else None)

    def _watch(self) -> None:
        """RUNNING: probe when due (:mod:`.health`); act on the verdict."""
        board = self._board
        while True:
            config = self._config
            with board.cond:
                probe_now = board.probe_now
            now = self._system.monotonic()
            due = self._health.due(config.ollama, probe_now)
            if now < due:
                self._waiter.pause(due)
                continue
            with board.cond:
                board.probe_now = False
            full = self._health.begin(now, config.ollama)
            url = self._ollama.url
            assert url is not None
            verdict = self._health.probe(url, config, full, self._waiter.wait_for)
            self._note(verdict, full)
            # A stopped server answers nothing until continued: no point in probing it again.
            probe_failed = verdict.record is not None and not verdict.record["ok"]
            stopped = self._ollama.stopped() if probe_failed else None
            if verdict.hung:
                with board.cond:
                    board.report.hang_verdicts += 1
            self._cause = "stopped" if stopped else "hang" if verdict.hung else "probe"
            if stopped:
                self._failed_running(stopped)
                return
            if verdict.hung and self._ollama.cannot_restart(config.ollama):
                self._report_hang(verdict.reason)
                continue
            if full:
                self._hang_reported = False
            if verdict.reason:
                self._failed_running(verdict.reason)
                return

    def _note(self, verdict: Verdict, full: bool) -> None:
        """Put a probe's findings, and in a full round the process tree, in the report."""
        stats = self._ollama.process_stats() if full else None
        with self._board.cond:
            report = self._board.report
            if verdict.record is not None:
                report.last_probe = verdict.record
            if verdict.models is not None:
                report.models = verdict.models
            if full:
                report.process = stats

    def _report_hang(self, reason: str) -> None:
        """Not ours to restart (external mode without a restart command): a hang is reported
        (once), not acted on."""
        if not self._hang_reported:
            log.error("Ollama is %s; no ollama.restart_command, so not restarting it", reason)
            with self._board.cond:
                self._board.report.last_reason = (f"{reason}; not restarted "
                                                  "(no ollama.restart_command)")
        self._hang_reported = True

    def _set_probe(self, record: dict) -> None:
        with self._board.cond:
            self._board.report.last_probe = record

    # -- failures and restarts ------------------------------------------------------
    def _failed_running(self, reason: str, permanent: bool = False) -> None:
        """A probe or start-up failure: stop what is left of the server, then decide."""
        self._stop_server(reason)
        self._exited(reason, permanent)

    def _on_exit(self) -> None:
        """The server exited by itself: sweep, reap, record, decide."""
        ended = self._halt(0.0)
        assert ended is not None   # only a server of ours exits by itself
        self._cause = "exit"
        self._exited(ended.reason, ended.permanent)

    def _exited(self, reason: str, permanent: bool) -> None:
        """-> EXITED, then FATAL if restarting cannot help, else as the policy says."""
        self._set_state(State.EXITED, reason)
        if permanent:
            self._give_up(reason)
        else:
            self._failed(reason)

    def _stop_server(self, reason: str) -> None:
        self._set_state(State.STOPPING, reason)
        self._halt(self._config.ollama.stop_grace)

    def _halt(self, grace: float) -> Ended | None:
        """Stop the server if it still runs, sweep its orphans, reap it.

        Once stop() was called, the grace period shrinks to fit its time-out.
        """
        board = self._board
        with board.cond:
            left = board.stop_deadline - self._system.monotonic() - KILL_MARGIN
        ended = self._ollama.halt(max(0.0, min(grace, left)))
        if ended:
            with board.cond:
                board.report.record_exit(ended.returncode, self._system.wall())
                board.report.orphans_swept += ended.swept
        return ended

    def _failed(self, reason: str) -> None:
        """EXITED after a failure: restart now, back off, or give up (FATAL)."""
        if self._ollama.cannot_restart(self._config.ollama):
            return  # nothing we may do: stay EXITED and watch for it to come back
        with self._board.cond:  # snapshot() reads the policy's window
            verdict = self._board.policy.record_failure(self._system.monotonic(), reason)
        if verdict.fatal:
            self._give_up(verdict.fatal)
        elif verdict.delay > 0:
            self._backoff_until = self._system.monotonic() + verdict.delay
            self._set_state(State.BACKOFF, f"{reason}; restarting in {verdict.delay:g} s")
        else:
            self._launch(restart=True)

    def _give_up(self, reason: str) -> None:
        with self._board.cond:
            self._board.report.fatal_reason = reason
        self._set_state(State.FATAL, reason)

    def _restart(self, reason: str) -> None:
        """An operator's (or a reload's) restart: from any state, no back-off, FATAL forgiven."""
        board = self._board
        self._cause = "requested"
        with board.cond:
            board.policy.reset()
            board.report.fatal_reason = None
        if board.state in (State.STARTING, State.RUNNING):
            self._stop_server(reason)
            self._set_state(State.STOPPED, reason)
        self._launch(restart=True, reason=reason)

    # -- waiting states -------------------------------------------------------------
    def _sit_out_backoff(self) -> None:
        while self._system.monotonic() < self._backoff_until:
            self._waiter.pause(self._backoff_until)
        self._launch(restart=True)

    def _sit_fatal(self) -> None:
        while True:   # until a restart request or stop interrupts
            self._waiter.pause(self._system.monotonic() + IDLE_WAIT)

    def _wait_for_return(self) -> None:
        """EXITED and not ours to restart: watch for it to answer again."""
        url = self._ollama.url
        assert url is not None
        while True:
            result = self._alive(url)
            self._set_probe(probe_record(result))
            if result.ok:
                self._launch(restart=False)
                return
            self._waiter.pause(self._system.monotonic() + self._config.ollama.probe_interval)

    def _shut_down(self) -> None:
        """End of the thread: stop the server within the stop() time-out."""
        board = self._board
        try:
            state = board.state
            if state is State.STOPPED:
                return
            if state in (State.STARTING, State.RUNNING):
                self._set_state(State.STOPPING, "stopping")
            self._halt(self._config.ollama.stop_grace)
            if board.state is not State.STOPPED:
                self._set_state(State.STOPPED, "stopped")
        except Exception:
            log.exception("stopping Ollama failed; trying once more without a grace period")
            self._ollama.halt(0.0)
