"""The :class:`Supervisor`: keeps one Ollama running, or watches one that someone else runs.

One thread owns the server and the state machine (:mod:`.states`); other
threads only read (``state``, ``url``, :meth:`~Supervisor.snapshot`,
:meth:`~Supervisor.wait_running`) or post requests (restart, probe now,
stop, reconfigure) that wake that thread. It waits in one place
(:mod:`.waiting`), so an exit is seen the moment it happens, no wait lacks
a time-out, and a hung probe cannot hang the supervisor.

Restart triggers while RUNNING, in spawn mode:

1. the process exits (pidfd);
2. ``GET /`` fails 3 times in a row (:mod:`.health`);
3. Ollama is hung: the inference probe timed out and no in-flight
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
import math
import shlex
import threading
from typing import Any, Callable

from ollamad.config import Config
from ollamad.supervisor import probes
from ollamad.supervisor.external import ExternalOllama, run_restart_command
from ollamad.supervisor.health import Health, Verdict, probe_record, warm_up
from ollamad.supervisor.policy import RestartPolicy
from ollamad.supervisor.probes import ProbeResult
from ollamad.supervisor.process import ServerProcess, check_command, launch_changes, spawn_server
from ollamad.supervisor.report import Report
from ollamad.supervisor.states import State, SupervisorError, check_transition
from ollamad.supervisor.system import System
from ollamad.supervisor.waiting import Exited, RestartRequested, StopRequested, Waiter

log = logging.getLogger("ollamad.supervisor")

#: How often ``GET /`` is tried while waiting for a start to finish.
STARTUP_POLL = 0.05
#: How long a sweep waits for SIGKILLed orphans to go.
SWEEP_TIMEOUT = 2.0
#: Of a stop() time-out, what is kept for SIGKILL and the sweep after the grace period.
KILL_MARGIN = 1.0
#: How long an idle wait (FATAL) sleeps before looking again; any request wakes it sooner.
IDLE_WAIT = 3600.0


class Supervisor:
    def __init__(self, config: Config, *,
                 progress: Callable[[], tuple[int, float | None]] = lambda: (0, None),
                 loading: Callable[[str], bool] = lambda model: False,
                 system: System | None = None,
                 on_change: Callable[[dict], None] | None = None):
        self._config = config
        self.mode = config.ollama.mode
        self._system = system or System()
        self._on_change = on_change
        self._health = Health(progress, loading)
        self._waiter = Waiter(self._system, self._check_events, lambda: self._process)
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        # Guarded by _cond: requests from other threads ...
        self._stop_requested = False
        self._stop_deadline = math.inf
        self._restart_reason: str | None = None
        #: From a restart request until the new server is STARTING: requests
        #: must wait for the new one, not slip through to the old one.
        self._restart_pending = False
        self._probe_now = False
        # ... and what the supervisor thread found out.
        self._runs = 0   # starts of Ollama (or, in external mode, of watching it)
        self._state = State.STOPPED
        self._thread_failed = False
        self._policy = RestartPolicy(config.ollama)
        self._report = Report()
        self._process: ServerProcess | None = None       # spawn mode
        self._external: ExternalOllama | None = None     # external mode
        self._backoff_until = 0.0
        self._hang_reported = False

    # -- the interface for the rest of the daemon ---------------------------------
    @property
    def state(self) -> State:
        with self._cond:
            return self._state

    @property
    def url(self) -> str | None:
        """Ollama's base URL, once known (for port 0, once the server logged its port)."""
        with self._cond:
            if self._external:
                return self._external.url
            return self._process.url if self._process else None

    @property
    def run_id(self) -> int:
        """Changes with every (re)start of Ollama: what was known of the last one is stale."""
        with self._cond:
            return self._runs

    def check_command(self) -> None:
        """Raise :class:`SupervisorError` (naming the remedies) when the command cannot run."""
        check_command(self._config.ollama)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Supervisor.start() called twice")
        self._thread = threading.Thread(target=self._run, name="ollamad-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop Ollama (spawn mode) and the supervisor thread within about ``timeout`` seconds.

        The grace period after SIGTERM is ``stop_grace``, shortened to fit ``timeout``.
        """
        with self._cond:
            self._stop_requested = True
            self._stop_deadline = self._system.monotonic() + timeout
            self._cond.notify_all()
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
        with self._cond:
            while self._state is not State.RUNNING or self._restart_pending:
                if self._state is State.FATAL or self._stop_requested or self._thread_failed:
                    return False
                remaining = deadline - self._system.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def unavailable_reason(self) -> str | None:
        """Why Ollama cannot come back without an operator: FATAL, stopping, or a dead supervisor."""
        with self._cond:
            if self._thread_failed:
                return self._report.fatal_reason or "the supervisor failed"
            if self._stop_requested:
                return "ollamad is stopping Ollama"
            if self._state is State.FATAL:
                return (f"Ollama is FATAL ({self._report.fatal_reason}); "
                        "an admin can run `ollamad restart` once the cause is fixed")
        return None

    def thread_alive(self) -> bool:
        """The supervisor thread runs (or has not been started), and has not failed."""
        with self._cond:
            failed = self._thread_failed
        return not failed and (self._thread is None or self._thread.is_alive()
                               or self._stop_requested)

    def request_restart(self, reason: str) -> None:
        """Restart Ollama now, whatever its state (FATAL included). Returns at once."""
        if self.mode == "external" and not self._config.ollama.restart_command:
            raise SupervisorError("cannot restart Ollama: it runs in external mode and "
                                  "ollama.restart_command is not set")
        with self._cond:
            if self._stop_requested:
                raise SupervisorError("cannot restart Ollama: the supervisor is stopping")
            self._restart_reason = f"restart requested: {reason}"
            self._restart_pending = True
        self._waiter.wake()

    def report_connection_failure(self) -> None:
        """A worker could not connect: probe ``GET /`` now rather than at the next interval."""
        with self._cond:
            self._probe_now = True
        self._waiter.wake()

    def reconfigure(self, config: Config) -> list[str]:
        """Apply a reloaded config; probe, hang, back-off and warm-up settings apply now.

        Returns the changed keys that need a restart of Ollama (``ollama.command``,
        ``ollama.stand_in``, ``ollama.url``, ``ollama.num_parallel``, and ``workers``
        when it sets OLLAMA_NUM_PARALLEL); they apply at its next (re)start.
        ``ollama.mode`` needs a restart of the daemon. A reload also leaves FATAL.
        """
        pending = launch_changes(self._config, config)
        with self._cond:
            self._config = config
            self._policy.settings = config.ollama
            if self._state is State.FATAL:
                self._restart_reason = "configuration reloaded"
        self._waiter.wake()
        return pending

    def ollama_pids(self) -> set[int]:
        """Ollama's server and all its descendants now (for attributing GPU memory)."""
        with self._cond:
            tree = self._process.tree if self._process else (
                self._external.tree if self._external else None)
        return tree.pids() if tree else set()

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return self._snapshot_locked()

    # -- state --------------------------------------------------------------------
    def _snapshot_locked(self) -> dict[str, Any]:
        now = self._system.monotonic()
        process, external = self._process, self._external
        pid = url = command = None
        if process:
            pid, url, command = process.pid, process.url, shlex.join(process.proc.args)
        elif external:
            pid, url = (external.tree.root_pid if external.tree else None), external.url
        return self._report.snapshot(mode=self.mode, state=self._state.value, pid=pid, url=url,
                                     command=command, now=now,
                                     restarts_in_window=self._policy.failures_in_window(now))

    def _set_state(self, new: State, reason: str | None = None) -> None:
        with self._cond:
            old = self._state
            check_transition(old, new)
            self._state = new
            if reason:
                self._report.last_reason = reason
            if new in (State.EXITED, State.STOPPED, State.FATAL, State.BACKOFF):
                self._report.gone()
                if self._external:
                    self._external.tree = None
            self._cond.notify_all()
            snapshot = self._snapshot_locked()
        log.log(logging.WARNING if new in (State.EXITED, State.FATAL) else logging.INFO,
                "ollama: %s -> %s%s", old, new, f" ({reason})" if reason else "")
        if self._on_change:
            try:
                self._on_change(snapshot)
            except Exception:
                log.exception("on_change callback failed")

    # -- waiting (see .waiting) ----------------------------------------------------
    def _check_events(self) -> None:
        with self._cond:
            if self._stop_requested:
                raise StopRequested()
            if self._restart_reason is not None:
                reason, self._restart_reason = self._restart_reason, None
                raise RestartRequested(reason)
        if self._process and self._process.has_exited():
            raise Exited()

    def _alive(self, url: str) -> ProbeResult:
        timeout = self._config.ollama.probe_timeout
        return self._waiter.wait_for(lambda: probes.alive(url, timeout), timeout,
                                     ProbeResult.timeout(timeout))

    # -- the supervisor thread ----------------------------------------------------
    def _run(self) -> None:
        handlers = {State.STARTING: self._await_ready, State.RUNNING: self._watch,
                    State.BACKOFF: self._sit_out_backoff, State.FATAL: self._sit_fatal,
                    State.EXITED: self._wait_for_external}
        try:
            self._launch(restart=False)
            while True:
                try:
                    handlers[self.state]()
                except Exited:
                    self._on_exit()
                except RestartRequested as request:
                    self._restart(request.reason)
        except StopRequested:
            pass
        except Exception as exc:
            log.exception("the supervisor failed")
            with self._cond:
                self._thread_failed = True
                self._report.fatal_reason = f"the supervisor failed: {exc!r}"
        finally:
            self._shut_down()

    def _launch(self, restart: bool, reason: str | None = None) -> None:
        """-> STARTING: spawn the server, or (external mode, restarting) run the restart command."""
        with self._cond:
            if self._stop_requested:
                raise StopRequested()
            if restart:
                self._report.restarts += 1
            self._restart_pending = False
            self._runs += 1
        config = self._config
        self._set_state(State.STARTING, reason)
        self._hang_reported = False
        if self.mode == "external":
            self._start_external(config, restart)
            return
        try:
            process = spawn_server(self._system, config, self._waiter.wake)
        except SupervisorError as error:
            self._set_state(State.EXITED, str(error))
            self._give_up(str(error))
            return
        with self._cond:
            self._process = process
            self._report.up_since = process.started_at
        log.info("started ollama[%d]: %s", process.pid, shlex.join(process.proc.args))

    def _start_external(self, config: Config, restart: bool) -> None:
        external = ExternalOllama(config.ollama.url, self._system)
        with self._cond:
            self._external = external
        if external.url is None:
            problem = f"ollama.url {config.ollama.url!r}: external mode needs a port"
            self._set_state(State.EXITED, problem)
            self._give_up(problem)
        elif restart and config.ollama.restart_command:
            timeout = config.ollama.startup_timeout
            error = self._waiter.wait_for(
                lambda: run_restart_command(self._system, config.ollama.restart_command, timeout),
                timeout, f"restart command {config.ollama.restart_command!r} did not finish")
            if error:
                log.error("%s", error)
                with self._cond:
                    self._report.last_reason = error

    def _await_ready(self) -> None:
        """STARTING: wait for ``GET /`` to answer 200, up to ``startup_timeout``."""
        timeout = self._config.ollama.startup_timeout
        started = self._process.started_at if self._process else self._system.monotonic()
        result: ProbeResult | None = None
        while True:
            url = self.url
            if url:
                result = self._alive(url)
                self._set_probe(probe_record(result))
                if result.ok:
                    self._became_running(url)
                    return
            now = self._system.monotonic()
            if now >= started + timeout:
                last = f" (last: {result.error})" if result else " (it never logged its port)"
                self._failed_running(f"did not answer GET / within {timeout:g} s{last}")
                return
            self._waiter.pause(min(now + STARTUP_POLL, started + timeout))

    def _became_running(self, url: str) -> None:
        with self._cond:
            if self._report.up_since is None:
                self._report.up_since = self._system.monotonic()
        self._set_state(State.RUNNING)
        config = self._config
        # In the background: liveness probes go on while a big model loads.
        self._health.reset(self._waiter.start(lambda: warm_up(url, config))
                           if config.ollama.warm_model else None)

    def _watch(self) -> None:
        """RUNNING: probe when due (:mod:`.health`); act on the verdict."""
        while True:
            config = self._config
            with self._cond:
                probe_now = self._probe_now
            now = self._system.monotonic()
            due = self._health.due(config.ollama, probe_now)
            if now < due:
                self._waiter.pause(due)
                continue
            with self._cond:
                self._probe_now = False
            full = self._health.begin(now, config.ollama)
            url = self.url
            assert url is not None
            verdict = self._health.probe(url, config, full, self._waiter.wait_for)
            self._note(verdict, full)
            if verdict.hung and self.mode == "external" and not config.ollama.restart_command:
                self._report_hang(verdict.reason)
                continue
            if full:
                self._hang_reported = False
            if verdict.reason:
                self._failed_running(verdict.reason)
                return

    def _note(self, verdict: Verdict, full: bool) -> None:
        """Put a probe's findings, and in a full round the process tree, in the report."""
        stats = None
        if full:
            tree = self._process.tree if self._process else self._external.find_tree()
            stats = tree.stats() if tree else None
        with self._cond:
            if verdict.record is not None:
                self._report.last_probe = verdict.record
            if verdict.models is not None:
                self._report.models = verdict.models
            if full:
                self._report.process = stats

    def _report_hang(self, reason: str) -> None:
        """External mode without a restart command: a hang is reported (once), not acted on."""
        if not self._hang_reported:
            log.error("Ollama is %s; no ollama.restart_command, so not restarting it", reason)
            with self._cond:
                self._report.last_reason = f"{reason}; not restarted (no ollama.restart_command)"
        self._hang_reported = True

    def _set_probe(self, record: dict) -> None:
        with self._cond:
            self._report.last_probe = record

    # -- failures and restarts ----------------------------------------------------
    def _failed_running(self, reason: str) -> None:
        """A probe or start-up failure: stop what is left of the server, then decide."""
        if self._process:
            self._set_state(State.STOPPING, reason)
            self._halt(self._config.ollama.stop_grace)
        self._set_state(State.EXITED, reason)
        self._failed(reason)

    def _on_exit(self) -> None:
        """The server exited by itself: sweep, reap, record, decide."""
        process = self._process
        assert process is not None
        reason = process.exit_reason(self._halt(0.0))
        self._set_state(State.EXITED, reason)
        self._failed(reason)

    def _halt(self, grace: float) -> int | None:
        """Stop the server if it still runs, sweep its orphans, reap it; its returncode.

        Spawn mode only. Once stop() was called, the grace period shrinks to fit its time-out.
        """
        process = self._process
        if process is None:
            return None
        with self._cond:
            left = self._stop_deadline - self._system.monotonic() - KILL_MARGIN
        returncode, swept = process.shut_down(max(0.0, min(grace, left)), SWEEP_TIMEOUT)
        with self._cond:
            self._report.record_exit(returncode, self._system.wall())
            self._report.orphans_swept += swept
            self._process = None
        return returncode

    def _failed(self, reason: str) -> None:
        """EXITED after a failure: restart now, back off, or give up (FATAL)."""
        if self.mode == "external" and not self._config.ollama.restart_command:
            return  # nothing we may do: stay EXITED and watch for it to come back
        with self._cond:  # snapshot() reads the policy's window
            verdict = self._policy.record_failure(self._system.monotonic(), reason)
        if verdict.fatal:
            self._give_up(verdict.fatal)
        elif verdict.delay > 0:
            self._backoff_until = self._system.monotonic() + verdict.delay
            self._set_state(State.BACKOFF, f"{reason}; restarting in {verdict.delay:g} s")
        else:
            self._launch(restart=True)

    def _give_up(self, reason: str) -> None:
        with self._cond:
            self._report.fatal_reason = reason
        self._set_state(State.FATAL, reason)

    def _restart(self, reason: str) -> None:
        """An operator's (or a reload's) restart: from any state, no back-off, FATAL forgiven."""
        with self._cond:
            self._policy.reset()
            self._report.fatal_reason = None
        if self.state in (State.STARTING, State.RUNNING):
            if self._process:
                self._set_state(State.STOPPING, reason)
                self._halt(self._config.ollama.stop_grace)
                self._set_state(State.STOPPED, reason)
            else:
                self._set_state(State.EXITED, reason)
        self._launch(restart=True, reason=reason)

    def _sit_out_backoff(self) -> None:
        while self._system.monotonic() < self._backoff_until:
            self._waiter.pause(self._backoff_until)
        self._launch(restart=True)

    def _sit_fatal(self) -> None:
        while True:   # until a restart request or stop interrupts
            self._waiter.pause(self._system.monotonic() + IDLE_WAIT)

    def _wait_for_external(self) -> None:
        """EXITED in external mode without a restart command: watch for it to answer again."""
        assert self._external is not None and self._external.url is not None
        while True:
            result = self._alive(self._external.url)
            self._set_probe(probe_record(result))
            if result.ok:
                self._launch(restart=False)
                return
            self._waiter.pause(self._system.monotonic() + self._config.ollama.probe_interval)

    def _shut_down(self) -> None:
        """End of the thread: stop the server (spawn mode) within the stop() time-out."""
        try:
            state = self.state
            if state is State.STOPPED:
                return
            if state in (State.STARTING, State.RUNNING):
                self._set_state(State.STOPPING, "stopping")
            self._halt(self._config.ollama.stop_grace)
            if self.state is not State.STOPPED:
                self._set_state(State.STOPPED, "stopped")
        except Exception:
            log.exception("stopping Ollama failed")
            if self._process:
                self._process.stop(0.0)

