"""The worker pool: N threads behind a bounded queue, and the progress tracker.

Only the I/O thread submits, so checking free room and then putting several
tasks (a batch) is atomic with respect to other submitters: workers only ever
make room. A task whose deadline passed while it waited is expired without
running, so it never reaches Ollama.

Idle workers are woken last-in, first-out. Each worker keeps its own HTTP
connection to Ollama, so under light load the same warm worker and
connection serve request after request; waking the longest-idle one (what
``Condition.notify`` does) rotated through all eight and cost about 0.5 ms a
request (bench/request_path.py).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ollamad_client.protocol import Error

log = logging.getLogger(__name__)


@dataclass
class Task:
    run: Callable[[], None]          # does the work and finishes its exchange
    #: Answers instead of running: "timeout" by default, or the given error
    #: (shutdown answers "shutting_down").
    expire: Callable[[Error | None], None]
    deadline: float
    cancel: threading.Event


class WorkerPool:
    def __init__(self, workers: int, capacity: int, name: str = "worker"):
        self._capacity = capacity
        self._tasks: collections.deque[Task] = collections.deque()
        self._lock = threading.Lock()
        self._idle: list[threading.Event] = []   # a stack: the last to idle wakes first
        self._busy = 0
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]

    @property
    def size(self) -> int:
        return len(self._threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, tasks: list[Task]) -> bool:
        """Queue all of ``tasks`` or none of them; False when the queue is full."""
        with self._lock:
            if self._stopping or len(self._tasks) + len(tasks) > self._capacity:
                return False
            self._tasks.extend(tasks)
            for _ in range(min(len(tasks), len(self._idle))):
                self._idle.pop().set()
            return True

    def depth(self) -> int:
        return len(self._tasks)

    def busy(self) -> int:
        return self._busy

    def drain(self) -> list[Task]:
        """Take every queued task out (shutdown answers them itself)."""
        with self._lock:
            tasks = list(self._tasks)
            self._tasks.clear()
            return tasks

    def stop(self, timeout: float) -> bool:
        """Stop the workers once their current task ends; True if all ended in time."""
        with self._lock:
            self._stopping = True
            while self._idle:
                self._idle.pop().set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _next(self, wake: threading.Event) -> Task | None:
        while True:
            with self._lock:
                if self._tasks:
                    self._busy += 1
                    return self._tasks.popleft()
                if self._stopping:
                    return None
                wake.clear()
                self._idle.append(wake)
            if not wake.wait(timeout=1.0):
                with self._lock:  # timed out: leave the stack before looking again
                    if wake in self._idle:
                        self._idle.remove(wake)

    def _work(self) -> None:
        wake = threading.Event()
        while (task := self._next(wake)) is not None:
            try:
                if task.cancel.is_set() or time.monotonic() >= task.deadline:
                    task.expire(None)
                else:
                    task.run()
            except Exception:  # a bug in a task must not kill the worker
                log.exception("task failed unexpectedly")
            finally:
                with self._lock:
                    self._busy -= 1


class ProgressTracker:
    """How long since an in-flight generation last got a chunk from Ollama.

    The baseline is reset when the first generation starts after an idle
    period, and then only by chunks: requests that keep arriving while
    Ollama is wedged do not mask the wedge.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last_progress = clock()

    def begin(self) -> None:
        with self._lock:
            if self._in_flight == 0:
                self._last_progress = self._clock()
            self._in_flight += 1

    def end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def touch(self) -> None:
        self._last_progress = self._clock()

    def __call__(self) -> tuple[int, float | None]:
        """(generations in flight, seconds since the last progress or None if idle)."""
        with self._lock:
            if self._in_flight == 0:
                return 0, None
            return self._in_flight, self._clock() - self._last_progress
