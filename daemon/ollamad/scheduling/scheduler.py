"""What a free slot runs next: lane first, then the tenants of that lane in turn.

A pure object (no threads, no locks, no sockets): the worker pool calls it
under its own lock, and tests drive it directly.

- **Lanes.** A free slot looks at the interactive lane first; the batch lane
  still gets a slot whenever it has work and holds fewer than its reserved
  share (:meth:`LanePolicy.batch_reserved`), so it is never starved. With
  too few slots to reserve one (a share of 0.25 and 1 to 3 workers) it gets
  every N-th free slot instead (:meth:`LanePolicy.batch_turn`).
- **Tenants.** Each lane keeps one FIFO per tenant. With ``fair`` on, the
  tenants take turns (round-robin: a tenant that was served goes to the back),
  so one tenant's 10,000 items delay another's by one item per turn, not by
  their whole length. With ``fair`` off the lane serves in arrival order.
- **Slots per user.** A tenant whose uid (or key) already runs ``max_concurrent``
  items is passed over until one of them ends; its items keep their place.

Dropped tasks (answered while queued) leave the counts at once and the
queues when a turn reaches them, or in a prune when many have piled up.
"""

from __future__ import annotations

import collections
import itertools
from typing import Iterator, Protocol

from ollamad.scheduling.policy import (BATCH, INTERACTIVE, LANES, LanePolicy, LimitBook,
                                       Principal, Tenant)

#: Dropped tasks that may linger in the queues (beyond the live ones) before a prune.
PRUNE_AFTER = 64


class Schedulable(Protocol):
    lane: str
    tenant: Tenant
    state: str       # "queued", "taken", "dropped"
    seq: int
    counted_as: tuple    # the keys its counts go under (set by the scheduler)


class Scheduler:
    def __init__(self, policy: LanePolicy, limits: LimitBook, slots: int):
        self.policy = policy
        self.limits = limits
        self.slots = slots
        self._lanes: dict[str, collections.OrderedDict[Tenant, collections.deque]] = {
            lane: collections.OrderedDict() for lane in LANES}
        self._seq = itertools.count()
        self.queued = 0
        self._lingering = 0         # dropped tasks still in the queues
        #: Items queued and running, by lane, by tenant and by ("user", principal); no
        #: zeros kept.
        self.queued_by: dict = {}
        self.running_by: dict = {}
        #: Free slots that went to interactive work while batch work waited.
        self._batch_passed_over = 0

    # -- queueing ------------------------------------------------------------

    def add(self, task: Schedulable) -> None:
        task.seq = next(self._seq)
        task.lane = self.policy.lane(task.lane)
        task.counted_as = (task.lane, task.tenant, ("user", task.tenant.principal))
        self._lanes[task.lane].setdefault(task.tenant, collections.deque()).append(task)
        self._count(self.queued_by, task, +1)
        self.queued += 1

    def dropped(self, task: Schedulable) -> None:
        """``task`` (queued until now) was answered without running."""
        self._count(self.queued_by, task, -1)
        self.queued -= 1
        self._lingering += 1
        if self._lingering > self.queued + PRUNE_AFTER:
            self._prune()

    def take_all(self) -> list[Schedulable]:
        """Every queued task, out of the queues (shutdown answers them)."""
        tasks = sorted((t for t in self._all() if t.state == "queued"), key=lambda t: t.seq)
        for tenants in self._lanes.values():
            tenants.clear()
        self.queued_by = {}
        self.queued = self._lingering = 0
        return tasks

    # -- choosing ------------------------------------------------------------

    def next(self) -> Schedulable | None:
        """The task a free slot runs now (marked running), or None if none may run."""
        batch, interactive = self._head(BATCH), self._head(INTERACTIVE)
        chosen = interactive or batch
        if batch is not None and interactive is not None:
            turn = self.policy.batch_turn(self.slots)
            if self.running_by.get(BATCH, 0) < self.policy.batch_reserved(self.slots) or \
                    (turn and self._batch_passed_over + 1 >= turn):
                chosen = batch
            self._batch_passed_over = 0 if chosen is batch else self._batch_passed_over + 1
        if chosen is None:
            return None
        tenant, task = chosen
        queue = self._lanes[task.lane][tenant]
        queue.popleft()
        if not queue:
            del self._lanes[task.lane][tenant]
        elif self.policy.fair:
            self._lanes[task.lane].move_to_end(tenant)   # served: to the back of the turn
        self._count(self.queued_by, task, -1)
        self._count(self.running_by, task, +1)
        self.queued -= 1
        return task

    def finished(self, task: Schedulable) -> None:
        """A task :meth:`next` handed out has ended."""
        self._count(self.running_by, task, -1)

    def _head(self, lane: str) -> tuple[Tenant, Schedulable] | None:
        """The tenant (and its first task) whose turn it is in ``lane``."""
        tenants = self._lanes[lane]
        best: tuple[Tenant, Schedulable] | None = None
        empty = []
        for tenant, queue in tenants.items():
            while queue and queue[0].state != "queued":
                queue.popleft()
                self._lingering -= 1
            if not queue:
                empty.append(tenant)
                continue
            if self.running_by.get(("user", tenant.principal), 0) >= \
                    self.limits.of(tenant.principal).max_concurrent:
                continue
            if best is None or queue[0].seq < best[1].seq:
                best = (tenant, queue[0])
                if self.policy.fair:
                    break
        for tenant in empty:
            del tenants[tenant]
        return best

    # -- bookkeeping ---------------------------------------------------------

    @staticmethod
    def _count(counter: dict, task: Schedulable, delta: int) -> None:
        # Zeros are deleted: a client inventing app names must not grow these.
        for key in task.counted_as:
            value = counter.get(key, 0) + delta
            if value:
                counter[key] = value
            else:
                del counter[key]

    def queued_for(self, who: Principal) -> int:
        """Items queued for a uid or key (:func:`~ollamad.scheduling.policy.principal`)."""
        return self.queued_by.get(("user", who), 0)

    def lane_counts(self) -> dict[str, dict[str, int]]:
        return {lane: {"queued": self.queued_by.get(lane, 0),
                       "in_flight": self.running_by.get(lane, 0)} for lane in LANES}

    def tenant_counts(self) -> dict[Tenant, dict[str, int]]:
        tenants = {key for key in (*self.queued_by, *self.running_by) if isinstance(key, Tenant)}
        return {tenant: {"queued": self.queued_by.get(tenant, 0),
                         "in_flight": self.running_by.get(tenant, 0)} for tenant in tenants}

    def _all(self) -> Iterator[Schedulable]:
        for tenants in self._lanes.values():
            for queue in tenants.values():
                yield from queue

    def _prune(self) -> None:
        for tenants in self._lanes.values():
            for tenant in list(tenants):
                live = collections.deque(t for t in tenants[tenant] if t.state == "queued")
                if live:
                    tenants[tenant] = live
                else:
                    del tenants[tenant]
        self._lingering = 0
