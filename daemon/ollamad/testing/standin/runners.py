"""Loaded models and their runner processes: spawn, keep-alive expiry, death, unload.

One runner child process per loaded model (see `runner.py`). A monitor thread
notices at once when a runner exits (via a pidfd) and unloads its model, and
unloads idle models whose keep-alive has run out. Killing is always SIGKILL,
as Ollama does with its runners.
"""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from ollamad.testing.standin import log
from ollamad.testing.standin.apitypes import RUNNER_TERMINATED, ApiError, ClientGone
from ollamad.testing.standin.catalog import Model
from ollamad.testing.standin.config import Settings
from ollamad.testing.standin.gotime import FOREVER_NS, NS_PER_S, rfc3339_nano

_HAS_PIDFD = hasattr(os, "pidfd_open")
# Longest the monitor sleeps: it also polls, in case a pidfd is unavailable.
_MONITOR_TICK = 1.0 if _HAS_PIDFD else 0.2


class Runner:
    """A runner process and the bookkeeping of the model it holds."""

    def __init__(self, model: Model, process: subprocess.Popen, vram: int,
                 parallel: int, keep_alive_ns: int):
        self.model = model
        self.process = process
        self.vram = vram
        self.slots = threading.BoundedSemaphore(parallel)
        self.keep_alive_ns = keep_alive_ns
        self.refcount = 1
        self.alive = True
        self.idle_since = time.monotonic()
        self.expires_at_ns = time.time_ns() + keep_alive_ns
        self.expires_monotonic: float | None = None  # set while idle with a finite keep-alive
        try:
            self.pidfd: int | None = os.pidfd_open(process.pid) if _HAS_PIDFD else None
        except OSError:
            self.pidfd = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def ps_entry(self) -> dict:
        return {
            "name": self.model.name, "model": self.model.name, "size": self.vram,
            "digest": self.model.digest, "details": self.model.details(),
            "expires_at": rfc3339_nano(self.expires_at_ns, local=True), "size_vram": self.vram,
            "context_length": 2048,
        }


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
        threading.Thread(target=self._monitor, name="runner-monitor", daemon=True).start()

    # --- used by the scheduler -------------------------------------------------

    def checkout(self, model: Model, keep_alive_ns: int | None,
                 cancelled: Callable[[], bool]) -> Runner:
        """The runner holding `model`, loaded first if need be. Pair with `checkin`."""
        keep_alive = self._settings.keep_alive_ns if keep_alive_ns is None else keep_alive_ns
        with self._cond:
            runner = self._loaded.get(model.name)
            if runner is not None:
                runner.refcount += 1
                runner.keep_alive_ns = keep_alive
                runner.expires_monotonic = None
                return runner
            self._make_room(cancelled)
            runner = self._spawn(model, keep_alive)
        if self._settings.load_time:
            time.sleep(self._settings.load_time)  # a load runs to its end, like Ollama's
        if not runner.alive:  # killed or crashed while loading
            self.checkin(runner)
            raise ApiError(500, RUNNER_TERMINATED)
        log.info("server.go:594", f"llama runner started in {self._settings.load_time:.2f} seconds")
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
            runners = sorted(self._loaded.values(), key=lambda r: -r.expires_at_ns)
            return [runner.ps_entry() for runner in runners]

    def runners(self) -> list[dict]:
        with self._cond:
            return [{"model": r.model.name, "pid": r.pid} for r in self._loaded.values()]

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

    def _spawn(self, model: Model, keep_alive_ns: int) -> Runner:
        settings = self._settings
        vram = settings.vram_per_model
        if vram is None:
            vram = model.size + model.size // 4  # weights plus KV cache, roughly
        command = [sys.executable, "-m", "ollamad.testing.standin.runner",
                   "--model", model.name, "--ctx-size", "2048",
                   "--parallel", str(settings.num_parallel), "--vram", str(vram),
                   "--max-lifetime", str(settings.runner_max_lifetime)]
        log.info("server.go:376", "starting llama server", cmd=" ".join(command))
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            raise ApiError(500, f"error starting runner: {exc}") from None
        runner = Runner(model, process, vram, settings.num_parallel, keep_alive_ns)
        self._loaded[model.name] = runner
        self._unreaped.append(runner)
        self._wake_monitor()
        return runner

    def _make_room(self, cancelled: Callable[[], bool]):
        """Unload the least recently used idle model while too many are loaded."""
        while len(self._loaded) >= self._settings.max_loaded_models:
            idle = [r for r in self._loaded.values() if r.refcount == 0]
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
