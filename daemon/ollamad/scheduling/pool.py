"""The worker pool: N threads that ask the scheduler what to run next.

Admission is all-or-nothing per request (a batch goes in whole) and has two
bounds: the host-wide ``capacity`` (while there is room at all, a whole batch
enters, so that single requests arriving all the time cannot starve it out)
and each uid's ``max_queued`` items (strict: a user's queue never holds more).
A refusal says which bound and when room is likely (:class:`Refusal`). A task
whose request was answered while it waited (timed out, cancelled, its client
gone) is *dropped*: it leaves the counts at once and never runs; one whose
deadline passed while it waited is expired without running, so it never
reaches Ollama.

Idle workers are woken last-in, first-out. Each worker keeps its own HTTP
connection to Ollama, so under light load the same warm worker and
connection serve request after request; waking the longest-idle one (what
``Condition.notify`` does) rotated through all eight and cost about 0.5 ms a
request (bench/request_path.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ollamad.scheduling.policy import INTERACTIVE, LanePolicy, LimitBook, Tenant
from ollamad.scheduling.scheduler import Scheduler
from ollamad_client.protocol import Error

log = logging.getLogger(__name__)

#: The tenant of tasks made without one (tests, the daemon's own work).
NOBODY = Tenant(None, "ollamad")
#: Weight of the newest run time in the average behind retry hints.
SERVICE_TIME_WEIGHT = 0.1


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
    lane: str = INTERACTIVE
    tenant: Tenant = NOBODY
    #: Queued, taken by a worker, or dropped from the queue unrun.
    state: str = "queued"
    seq: int = field(default=0, repr=False)   # arrival order, set by the scheduler
    counted_as: tuple = field(default=(), repr=False)   # set by the scheduler


@dataclass(frozen=True)
class Refusal:
    """Why a request was not queued: ``limit`` names the bound."""

    limit: str               # "queue_size" or "max_queued"
    queued: int              # items queued under that bound now
    bound: int
    #: Seconds after which a retry is likely to find room (an estimate).
    retry_after: float
    #: False when the request can never fit (more items than the bound).
    retryable: bool = True


class WorkerPool:
    def __init__(self, workers: int, capacity: int, name: str = "worker",
                 policy: LanePolicy = LanePolicy(), limits: LimitBook = LimitBook()):
        self._capacity = capacity
        self._lock = threading.Lock()
        self._scheduler = Scheduler(policy, limits, workers)
        self._idle: list[threading.Event] = []   # a stack: the last to idle wakes first
        self._busy = 0
        self._stopping = False
        #: Average seconds a task runs (for retry hints); None until one has.
        self._service_time: float | None = None
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]

    @property
    def size(self) -> int:
        return len(self._threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def lane(self, wanted: str) -> str:
        """The lane a request that asks for ``wanted`` waits in (one lane when lanes are off)."""
        return self._scheduler.policy.lane(wanted)

    def configure(self, policy: LanePolicy, limits: LimitBook) -> None:
        """New lane policy and user limits (a reload); queued tasks keep their place."""
        with self._lock:
            self._scheduler.policy = policy
            self._scheduler.limits = limits

    def submit(self, tasks: list[Task]) -> Refusal | None:
        """Queue all of ``tasks`` (one request's, one tenant's) or none."""
        with self._lock:
            if self._stopping or self._scheduler.queued >= self._capacity:
                return self._refusal("queue_size", self._scheduler.queued, self._capacity,
                                     len(tasks), self.size)
            if tasks:
                who = tasks[0].tenant.principal
                limits = self._scheduler.limits.of(who)
                queued = self._scheduler.queued_for(who)
                if queued + len(tasks) > limits.max_queued:
                    return self._refusal("max_queued", queued, limits.max_queued, len(tasks),
                                         min(self.size, limits.max_concurrent))
            for task in tasks:
                self._scheduler.add(task)
            for _ in range(min(len(tasks), len(self._idle))):
                self._idle.pop().set()
            return None

    def _refusal(self, limit: str, queued: int, bound: int, items: int, slots: int) -> Refusal:
        # Room for these items comes when that many have left the queue, at
        # about one per service time per slot.
        needed = max(1, queued + items - bound)
        per_item = self._service_time if self._service_time is not None else 1.0
        retry_after = math.ceil(10 * needed * per_item / max(1, slots)) / 10
        return Refusal(limit, queued, bound, min(retry_after, 60.0), retryable=items <= bound)

    def drop(self, tasks: list[Task]) -> None:
        """Their request was answered: those still queued leave the queue unrun."""
        with self._lock:
            for task in tasks:
                if task.state == "queued":
                    task.state = "dropped"
                    self._scheduler.dropped(task)

    def depth(self) -> int:
        """Tasks waiting for a worker."""
        return self._scheduler.queued

    def alive(self) -> bool:
        """Every worker thread runs (before start() and after stop() too)."""
        return self._stopping or not any(t.ident is not None and not t.is_alive()
                                         for t in self._threads)

    def busy(self) -> int:
        return self._busy

    def counts(self) -> tuple[dict[str, dict[str, int]], dict[Tenant, dict[str, int]]]:
        """Queued and in flight, by lane and by tenant."""
        with self._lock:
            return self._scheduler.lane_counts(), self._scheduler.tenant_counts()

    def drain(self) -> list[Task]:
        """Take every queued task out (shutdown answers them itself)."""
        with self._lock:
            tasks = self._scheduler.take_all()
            for task in tasks:
                task.state = "dropped"
            return tasks  # type: ignore[return-value]

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
                task = self._scheduler.next()
                if task is not None:
                    task.state = "taken"
                    self._busy += 1
                    return task  # type: ignore[return-value]
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
        # A finishing worker asks the scheduler again itself, so a slot that a
        # capped user frees is used at once without waking another worker.
        while (task := self._next(wake)) is not None:
            started = time.monotonic()
            ran: float | None = None
            try:
                if task.cancel.is_set() or started >= task.deadline:
                    task.expire(None)
                else:
                    task.run()
                    ran = time.monotonic() - started
            except Exception:  # a bug in a task must not kill the worker
                log.exception("task failed unexpectedly")
            finally:
                with self._lock:
                    self._busy -= 1
                    self._scheduler.finished(task)
                    if ran is not None:
                        self._service_time = ran if self._service_time is None else \
                            self._service_time + SERVICE_TIME_WEIGHT * (ran - self._service_time)


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
