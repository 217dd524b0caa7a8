"""Loaded models and their runner processes: load, reload, memory, keep-alive expiry, unload.

One runner child process per loaded model (see `runnerprocess.py`). A
request whose runner options differ from the loaded runner's waits for that
runner's requests to finish and reloads the model; a new runner gets the
pretend VRAM that is free (idle models are evicted to make room, as Ollama
does), and the rest of it goes to the CPU. A monitor thread notices at once
when a runner exits (via a pidfd) and unloads its model, and unloads idle
models whose keep-alive has run out. Killing is always SIGKILL, as Ollama
does with its runners.
"""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import threading
import time
from typing import Callable

from ollamad.goduration import FOREVER_NS, NS_PER_S
from ollamad.testing.standin import log
from ollamad.testing.standin.apitypes import LOAD_ABORTED, ClientGone
from ollamad.testing.standin.catalog import Model
from ollamad.testing.standin.config import Settings
from ollamad.testing.standin.memory import Placement, place
from ollamad.testing.standin.runneroptions import RunnerOptions
from ollamad.testing.standin.runnerprocess import LoadAborted, Runner

_HAS_PIDFD = hasattr(os, "pidfd_open")
# Longest the monitor sleeps: it also polls, in case a pidfd is unavailable.
_MONITOR_TICK = 1.0 if _HAS_PIDFD else 0.2


class RunnerPool:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._cond = threading.Condition()
        self._loaded: dict[str, Runner] = {}
        self._unreaped: list[Runner] = []
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._monitor_wakes_at = 0.0
        #: Loads started, and aborted because their client left (the control endpoint shows
        #: them: a test can tell one load from a load cut and started again).
        self.loads = {"started": 0, "aborted": 0}
        threading.Thread(target=self._monitor, name="runner-monitor", daemon=True).start()

    # --- used by the scheduler -------------------------------------------------

    def checkout(self, model: Model, options: RunnerOptions, keep_alive_ns: int | None,
                 cancelled: Callable[[], bool]) -> Runner:
        """The runner holding `model` with these runner options, loaded (or reloaded) first
        if need be. Pair with `checkin`. The caller serialises loads (the scheduler)."""
        keep_alive = self._settings.keep_alive_ns if keep_alive_ns is None else keep_alive_ns
        with self._cond:
            runner = self._loaded.get(model.name)
            if runner is not None and options.reloads(runner.options):
                self._wait_idle(runner, cancelled)
                self._kill(runner, "runner options changed: reloading")
                runner = None
            if runner is not None:
                runner.refcount += 1
                runner.keep_alive_ns = keep_alive
                runner.expires_monotonic = None
                return runner
            slots = model.slots(self._settings.num_parallel)
            placement = self._make_room(model, options, slots, cancelled)
            runner = Runner(model, options, placement, slots, keep_alive,
                            self._settings.load_time, self._settings.runner_max_lifetime)
            self._loaded[model.name] = runner
            self._unreaped.append(runner)
            self.loads["started"] += 1
            self._wake_monitor()
        try:
            runner.wait_loaded(cancelled, self._settings.load_timeout_ns)
        except LoadAborted:
            log.event("WARN", "llama_server.go:1301", LOAD_ABORTED)
            with self._cond:
                self.loads["aborted"] += 1
            self._abandon(runner, "load aborted")
            raise ClientGone() from None
        except BaseException:
            self._abandon(runner, "load failed")
            raise
        return runner

    def checkin(self, runner: Runner):
        with self._cond:
            runner.refcount -= 1
            if runner.refcount > 0 or not runner.alive:
                return
            runner.idle_since = time.monotonic()
            if runner.keep_alive_ns == 0:
                self._kill(runner, "keep_alive expired")
                return
            now_ns = time.time_ns()
            runner.expires_at_ns = now_ns + runner.keep_alive_ns
            if runner.keep_alive_ns < FOREVER_NS:
                runner.expires_monotonic = runner.idle_since + runner.keep_alive_ns / NS_PER_S
                if runner.expires_monotonic < self._monitor_wakes_at:
                    self._wake_monitor()
            self._cond.notify_all()

    def unload(self, model: Model):
        """Unload now, or when the model's current requests finish (keep_alive 0)."""
        with self._cond:
            runner = self._loaded.get(model.name)
            if runner is None:
                return
            runner.keep_alive_ns = 0
            runner.expires_at_ns = time.time_ns()
            if runner.refcount == 0:
                self._kill(runner, "unload requested")

    def crash(self, runner: Runner):
        """Really kill a runner mid-request (the crash_mid_stream fault)."""
        with self._cond:
            self._kill(runner, "runner crashed")

    def terminate_model(self, model: Model):
        """Kill the model's runner, if any (the runner_terminated fault)."""
        with self._cond:
            runner = self._loaded.get(model.name)
            if runner is not None:
                self._kill(runner, "runner terminated")

    # --- reporting and shutdown ----------------------------------------------

    def ps_entries(self) -> list[dict]:
        with self._cond:
            runners = sorted((r for r in self._loaded.values() if not r.loading),
                             key=lambda r: -r.expires_at_ns)  # a loading model is not listed
            return [runner.ps_entry() for runner in runners]

    def runners(self) -> list[dict]:
        with self._cond:
            return [runner.describe() for runner in self._loaded.values()]

    def kill_all(self, timeout: float):
        """SIGKILL every runner and reap it (what Ollama does on SIGTERM)."""
        with self._cond:
            runners = list(self._unreaped)
            for runner in runners:
                self._kill(runner, "server shutting down")
        deadline = time.monotonic() + timeout
        for runner in runners:
            try:
                runner.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    # --- internals (callers hold self._cond) ----------------------------------

    def _abandon(self, runner: Runner, reason: str):
        with self._cond:
            runner.refcount -= 1
            self._kill(runner, reason)

    def _wait_idle(self, runner: Runner, cancelled: Callable[[], bool]):
        while runner.refcount > 0 and runner.alive:
            if cancelled():
                raise ClientGone()
            self._cond.wait(0.1)

    def _vram_free(self) -> int:
        return self._settings.vram - sum(r.placement.size_vram for r in self._loaded.values())

    def _make_room(self, model: Model, options: RunnerOptions, slots: int,
                   cancelled: Callable[[], bool]) -> Placement:
        """Unload least recently used idle models while too many are loaded, or while the
        new one would fit on the GPU only without them; its placement once there is room."""
        while True:
            placement = place(model, options.num_ctx, slots, options.num_gpu, self._vram_free())
            too_many = len(self._loaded) >= self._settings.max_loaded_models
            crowded = placement.size_vram < min(placement.size, self._settings.vram) \
                and options.num_gpu < 0
            idle = [r for r in self._loaded.values() if r.refcount == 0]
            if not too_many and not (crowded and idle):
                return placement
            if idle:
                self._kill(min(idle, key=lambda r: r.idle_since), "making room")
            elif cancelled():
                raise ClientGone()
            else:
                self._cond.wait(0.1)

    def _kill(self, runner: Runner, reason: str):
        if self._loaded.get(runner.model.name) is runner:
            del self._loaded[runner.model.name]
        if runner.alive:
            runner.alive = False
            log.info("sched.go:494", "stopping runner", model=runner.model.name,
                     pid=runner.pid, reason=reason)
            try:
                os.kill(runner.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._cond.notify_all()

    def _wake_monitor(self):
        try:
            os.write(self._wake_write, b"\0")
        except BlockingIOError:
            pass  # already awake-pending

    # --- the monitor thread ----------------------------------------------------

    def _monitor(self):
        while True:
            with self._cond:
                runners = list(self._unreaped)
                deadline = min((r.expires_monotonic for r in self._loaded.values()
                                if r.refcount == 0 and r.expires_monotonic is not None),
                               default=math.inf)
                timeout = max(0.0, min(_MONITOR_TICK, deadline - time.monotonic()))
                self._monitor_wakes_at = time.monotonic() + timeout
            poller = select.poll()
            poller.register(self._wake_read, select.POLLIN)
            for runner in runners:
                if runner.pidfd is not None:
                    poller.register(runner.pidfd, select.POLLIN)
            poller.poll(math.ceil(timeout * 1000))
            try:
                os.read(self._wake_read, 4096)
            except BlockingIOError:
                pass
            self._reap(runners)
            self._expire()

    def _reap(self, runners: list[Runner]):
        for runner in runners:
            if runner.process.poll() is None:
                continue
            with self._cond:
                self._unreaped.remove(runner)
                if runner.alive:
                    log.event("WARN", "server.go:612", "runner exited unexpectedly",
                              model=runner.model.name, pid=runner.pid,
                              status=runner.process.returncode)
                    self._kill(runner, "runner exited")
            if runner.pidfd is not None:
                os.close(runner.pidfd)

    def _expire(self):
        now = time.monotonic()
        with self._cond:
            for runner in list(self._loaded.values()):
                expires = runner.expires_monotonic
                if runner.refcount == 0 and expires is not None and expires <= now:
                    self._kill(runner, "keep_alive expired")
