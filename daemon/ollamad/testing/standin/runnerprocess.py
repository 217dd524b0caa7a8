"""One runner process as the server sees it: its start, its load, and the tokens it streams.

The load is the runner's start-up: the server waits for its `ready PORT`
line (see `runner.py`), as Ollama waits for llama-server's health check, and
aborts it when the client that asked for it goes away (llm/llama_server.go
WaitUntilRunning: "client connection closed before llama-server finished
loading, aborting load"); the scheduler then kills the half-loaded runner.
A load that stalls for OLLAMA_LOAD_TIMEOUT fails. Each completion is one
connection to the runner: a stopped runner stalls it, a dead one breaks it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

from ollamad.goduration import NS_PER_S
from ollamad.testing.standin import log
from ollamad.testing.standin import runner as runner_program
from ollamad.testing.standin.apitypes import (
    LOAD_TIMED_OUT, MODEL_CRASHED, RUNNER_STOPPED, ApiError, ClientGone)
from ollamad.testing.standin.catalog import Model
from ollamad.testing.standin.gotime import rfc3339_nano
from ollamad.testing.standin.memory import Placement
from ollamad.testing.standin.runneroptions import RunnerOptions

_HAS_PIDFD = hasattr(os, "pidfd_open")
_POLL_MS = 50  # how often a wait looks whether its client is still there


class LoadAborted(Exception):
    """The client went away before the runner finished loading."""


def _exit_text(returncode: int) -> str:
    """How Go's os/exec describes an exit: `exit status 2`, `signal: killed`."""
    if returncode >= 0:
        return f"exit status {returncode}"
    name = signal.strsignal(-returncode) or f"signal {-returncode}"
    return f"signal: {name[:1].lower()}{name[1:]}"


class Runner:
    """A runner process and the bookkeeping of the model it holds."""

    def __init__(self, model: Model, options: RunnerOptions, placement: Placement, slots: int,
                 keep_alive_ns: int, load_time: float, max_lifetime: float):
        self.model = model
        self.options = options
        self.placement = placement
        self.parallel = slots
        self.slots = threading.BoundedSemaphore(slots)
        self.keep_alive_ns = keep_alive_ns
        self.refcount = 1
        self.alive = True
        self.loading = True
        self.port: int | None = None
        self.idle_since = time.monotonic()
        self.expires_at_ns = time.time_ns() + keep_alive_ns
        self.expires_monotonic: float | None = None  # set while idle with a finite keep-alive
        # The program by path, without site (-S): it needs only the standard library, and
        # every load waits for it to start (~30 ms instead of ~100 ms with the package's).
        command = [sys.executable, "-S", "-E", runner_program.__file__, "--model", model.name,
                   "--ctx-size", str(options.num_ctx * slots), "--parallel", str(slots),
                   "--load-time", str(load_time), "--max-lifetime", str(max_lifetime)]
        log.info("server.go:376", "starting llama server", cmd=" ".join(command))
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            raise ApiError(500, f"error starting runner: {exc}") from None
        try:
            self.pidfd: int | None = os.pidfd_open(self.pid) if _HAS_PIDFD else None
        except OSError:
            self.pidfd = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_loaded(self, cancelled: Callable[[], bool], stall_timeout_ns: int):
        """Wait for the runner to report ready; LoadAborted, or ApiError when it fails."""
        started = time.monotonic()
        deadline = started + stall_timeout_ns / NS_PER_S
        pipe = self.process.stdout
        poller = select.poll()
        poller.register(pipe, select.POLLIN)
        line = b""
        try:
            while not line.endswith(b"\n"):
                if poller.poll(_POLL_MS):
                    chunk = os.read(pipe.fileno(), 64)
                    if not chunk:
                        raise ApiError(500, "llama-server process has terminated: "
                                       + _exit_text(self.process.wait()))
                    line += chunk
                elif cancelled():
                    raise LoadAborted()
                elif time.monotonic() > deadline:
                    raise ApiError(500, LOAD_TIMED_OUT)
        finally:
            pipe.close()
        self.port = int(line.split()[1])
        self.loading = False
        log.info("server.go:594",
                 f"llama-server started in {time.monotonic() - started:.2f} seconds")

    def complete(self, request: dict, cancelled: Callable[[], bool]) -> Iterator[dict]:
        """The runner's answer to one completion `request` (see runner.py), event by event.

        ApiError when the runner is gone or dies mid-answer; ClientGone when the
        client leaves while the runner is silent (a stopped runner stays silent).
        """
        try:
            connection = socket.create_connection(("127.0.0.1", self.port), timeout=5.0)
        except OSError:
            raise ApiError(500, RUNNER_STOPPED, from_runner=True) from None
        with connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.setblocking(False)
            try:
                connection.sendall(json.dumps(request).encode() + b"\n")
            except OSError:
                raise ApiError(500, RUNNER_STOPPED, from_runner=True) from None
            poller = select.poll()
            poller.register(connection, select.POLLIN)
            buffered = b""
            while True:
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    yield event
                    if event.get("done"):
                        return
                if not poller.poll(_POLL_MS):
                    if cancelled():
                        raise ClientGone()
                    continue
                try:
                    data = connection.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    raise ApiError(500, MODEL_CRASHED, from_runner=True)
                buffered += data

    def ps_entry(self) -> dict:
        return {
            "name": self.model.name, "model": self.model.name, "size": self.placement.size,
            "digest": self.model.digest, "details": self.model.details(),
            "expires_at": rfc3339_nano(self.expires_at_ns, local=True),
            "size_vram": self.placement.size_vram, "context_length": self.options.num_ctx,
        }

    def describe(self) -> dict:
        """What the control endpoint reports about this runner."""
        return {"model": self.model.name, "pid": self.pid, "loading": self.loading,
                "parallel": self.parallel, "size": self.placement.size,
                "size_vram": self.placement.size_vram, "options": self.options.describe()}

