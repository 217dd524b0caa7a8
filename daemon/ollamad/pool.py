"""The worker pool: N threads behind a bounded queue, and the progress tracker.

Only the I/O thread submits, so checking free room and then putting several
tasks (a batch) is atomic with respect to other submitters: workers only ever
make room. A task whose deadline passed while it waited is expired without
running, so it never reaches Ollama.
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
        self._cond = threading.Condition()
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
        with self._cond:
            if self._stopping or len(self._tasks) + len(tasks) > self._capacity:
                return False
            self._tasks.extend(tasks)
            self._cond.notify(len(tasks))
            return True

    def depth(self) -> int:
        return len(self._tasks)

    def busy(self) -> int:
        return self._busy

    def drain(self) -> list[Task]:
        """Take every queued task out (shutdown answers them itself)."""
        with self._cond:
            tasks = list(self._tasks)
            self._tasks.clear()
            return tasks

    def stop(self, timeout: float) -> bool:
        """Stop the workers once their current task ends; True if all ended in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _next(self) -> Task | None:
        with self._cond:
            while not self._tasks:
                if self._stopping:
                    return None
                self._cond.wait(timeout=1.0)
            self._busy += 1
            return self._tasks.popleft()

    def _work(self) -> None:
        while (task := self._next()) is not None:
            try:
                if task.cancel.is_set() or time.monotonic() >= task.deadline:
                    task.expire(None)
                else:
                    task.run()
            except Exception:  # a bug in a task must not kill the worker
                log.exception("task failed unexpectedly")
            finally:
                with self._cond:
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
