"""Ollama's scheduler, reduced to what clients can observe.

- One scheduler serialises model loads (and reloads). A request that finds it
  busy (another request is loading a model) waits in a queue of at most
  `OLLAMA_MAX_QUEUE`; one more gets 503 `server busy...`. A load belongs to
  the request that started it: its client leaving aborts it, and the next
  request in the queue starts from zero.
- Once it has its runner, a request waits for one of the runner's
  `OLLAMA_NUM_PARALLEL` slots with no bound and no timeout, as in Ollama —
  only its client going away ends the wait.
- The `busy` and `runner_terminated` faults strike here, where their real
  counterparts happen.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from ollamad.testing.standin.apitypes import (
    REQUEST_CANCELED, RUNNER_TERMINATED, SERVER_BUSY, ApiError, ClientGone)
from ollamad.testing.standin.catalog import Model
from ollamad.testing.standin.faults import FaultBook
from ollamad.testing.standin.runneroptions import RunnerOptions
from ollamad.testing.standin.runners import Runner, RunnerPool

_POLL = 0.1  # seconds between checks that a waiting client is still there


class Scheduler:
    def __init__(self, pool: RunnerPool, faults: FaultBook, max_queue: int):
        self._pool = pool
        self._faults = faults
        self._max_queue = max_queue
        self._busy = threading.Lock()  # held while the scheduler works on one request
        self._count_lock = threading.Lock()
        self._queued = 0

    def checkout(self, model: Model, options: RunnerOptions, keep_alive_ns: int | None,
                 cancelled: Callable[[], bool]) -> Runner:
        """The runner for `model` (loaded if need be); give it back with `checkin`."""
        if self._faults.take("busy"):
            raise ApiError(503, SERVER_BUSY)
        if not self._busy.acquire(blocking=False):
            self._wait_in_queue(cancelled)
        try:
            if self._faults.take("runner_terminated"):
                self._pool.terminate_model(model)
                raise ApiError(500, RUNNER_TERMINATED)
            return self._pool.checkout(model, options, keep_alive_ns, cancelled)
        finally:
            self._busy.release()

    def checkin(self, runner: Runner):
        self._pool.checkin(runner)

    def _wait_in_queue(self, cancelled: Callable[[], bool]):
        with self._count_lock:
            if self._queued >= self._max_queue:
                raise ApiError(503, SERVER_BUSY)
            self._queued += 1
        try:
            while not self._busy.acquire(timeout=_POLL):
                if cancelled():
                    raise ApiError(499, REQUEST_CANCELED)
        finally:
            with self._count_lock:
                self._queued -= 1

    @staticmethod
    @contextmanager
    def slot(runner: Runner, cancelled: Callable[[], bool]) -> Iterator[None]:
        """Hold one of the runner's parallel slots."""
        while not runner.slots.acquire(timeout=_POLL):
            if cancelled():
                raise ClientGone()
        try:
            yield
        finally:
            runner.slots.release()
