"""The worker pool: N threads behind a bounded queue, and the progress tracker.

The queue counts what is waiting: a task whose request was answered while it
waited (timed out, cancelled, its client gone) is *dropped*: it leaves the
count at once, never runs, and its memory is pruned from the queue soon
after. Admission needs free room, one place for a single request and for a
whole batch alike (a batch goes in whole, so that single requests arriving
all the time cannot starve it out), so the queue holds at most
``capacity - 1`` plus one batch's items. A task whose deadline passed while
it waited is expired without running, so it never reaches Ollama.

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
from typing import Callable, Protocol

from ollamad_client.protocol import Error

log = logging.getLogger(__name__)


class _Cancel(Protocol):
    def is_set(self) -> bool: ...


@dataclass(eq=False)
class Task:
    run: Callable[[], None]          # does the work and finishes its exchange
    #: Answers instead of running: "timeout" by default, or the given error
    #: (shutdown answers "shutting_down").
    expire: Callable[[Error | None], None]
    deadline: float
    cancel: _Cancel
    #: Queued, taken by a worker, or dropped from the queue unrun.
    state: str = "queued"


#: Dropped tasks that may linger in the queue (beyond the live ones) before a prune.
PRUNE_AFTER = 64


class WorkerPool:
    def __init__(self, workers: int, capacity: int, name: str = "worker"):
        self._capacity = capacity
        self._tasks: collections.deque[Task] = collections.deque()
        self._queued = 0         # tasks in _tasks still in the "queued" state
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
        """Queue all of ``tasks`` (one request's) or none; False when the queue is full."""
        with self._lock:
            if self._stopping or self._queued >= self._capacity:
                return False
            self._tasks.extend(tasks)
            self._queued += len(tasks)
            for _ in range(min(len(tasks), len(self._idle))):
                self._idle.pop().set()
            return True

    def drop(self, tasks: list[Task]) -> None:
        """Their request was answered: those still queued leave the queue unrun."""
        with self._lock:
            for task in tasks:
                if task.state == "queued":
                    task.state = "dropped"
                    self._queued -= 1
            if len(self._tasks) - self._queued > self._queued + PRUNE_AFTER:
                self._tasks = collections.deque(t for t in self._tasks if t.state == "queued")

    def depth(self) -> int:
        """Tasks waiting for a worker."""
        return self._queued

    def alive(self) -> bool:
        """Every worker thread runs (before start() and after stop() too)."""
        return self._stopping or not any(t.ident is not None and not t.is_alive()
                                         for t in self._threads)

    def busy(self) -> int:
        return self._busy

    def drain(self) -> list[Task]:
        """Take every queued task out (shutdown answers them itself)."""
        with self._lock:
            tasks = [t for t in self._tasks if t.state == "queued"]
            for task in tasks:
                task.state = "dropped"
            self._tasks.clear()
            self._queued = 0
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
                while self._tasks:
                    task = self._tasks.popleft()
                    if task.state == "queued":
                        task.state = "taken"
                        self._queued -= 1
                        self._busy += 1
                        return task
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
