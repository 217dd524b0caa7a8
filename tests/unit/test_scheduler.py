"""The scheduler as a value: lane order, the batch lane's share, tenants' turns, slots per user."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ollamad.scheduling import (BATCH, INTERACTIVE, LanePolicy, LimitBook, Scheduler, Tenant,
                                UserLimits)

ALICE_A, ALICE_B, BOB = Tenant(1000, "a"), Tenant(1000, "b"), Tenant(1001, "etl")


@dataclass(eq=False)
class Item:
    name: str
    tenant: Tenant
    lane: str = INTERACTIVE
    state: str = "queued"
    seq: int = 0
    counted_as: tuple = ()


def add(scheduler: Scheduler, tenant: Tenant, lane: str, count: int, prefix: str) -> list[Item]:
    items = [Item(f"{prefix}{i}", tenant, lane) for i in range(count)]
    for item in items:
        scheduler.add(item)
    return items


def run(scheduler: Scheduler, count: int, finish: bool = True) -> list[str]:
    """Hand out ``count`` tasks (finishing each at once when ``finish``); their names."""
    names = []
    for _ in range(count):
        item = scheduler.next()
        if item is None:
            break
        item.state = "taken"
        names.append(item.name)
        if finish:
            scheduler.finished(item)
    return names


def test_a_free_slot_takes_interactive_work_before_queued_batch_work():
    scheduler = Scheduler(LanePolicy(batch_min_share=0), LimitBook(), slots=8)
    add(scheduler, BOB, BATCH, 5, "b")
    add(scheduler, ALICE_A, INTERACTIVE, 2, "i")
    assert run(scheduler, 7) == ["i0", "i1", "b0", "b1", "b2", "b3", "b4"]


def test_with_lanes_off_everything_is_one_queue_in_arrival_order():
    scheduler = Scheduler(LanePolicy(lanes=False, fair=False), LimitBook(), slots=8)
    add(scheduler, BOB, BATCH, 3, "b")
    add(scheduler, ALICE_A, INTERACTIVE, 2, "i")
    assert run(scheduler, 5) == ["b0", "b1", "b2", "i0", "i1"]


def test_the_batch_lane_keeps_its_share_of_slots_while_interactive_work_waits():
    # 8 slots, a quarter kept for batch: 2 batch items run however much
    # interactive work waits, and no more than that while it waits.
    scheduler = Scheduler(LanePolicy(batch_min_share=0.25), LimitBook(), slots=8)
    add(scheduler, BOB, BATCH, 10, "b")
    add(scheduler, ALICE_A, INTERACTIVE, 20, "i")
    running = run(scheduler, 8, finish=False)
    assert sorted(running) == sorted(["b0", "b1", "i0", "i1", "i2", "i3", "i4", "i5"])
    assert scheduler.lane_counts()[BATCH] == {"queued": 8, "in_flight": 2}


def test_the_reserve_is_the_share_of_the_slots_or_with_too_few_slots_a_turn_in_time():
    assert LanePolicy(batch_min_share=0.25).batch_reserved(8) == 2
    assert LanePolicy(batch_min_share=0.5).batch_reserved(8) == 4
    assert LanePolicy(batch_min_share=0).batch_reserved(8) == 0
    assert LanePolicy(lanes=False).batch_reserved(8) == 0
    assert LanePolicy(batch_min_share=0.25).batch_turn(8) == 0
    assert LanePolicy(batch_min_share=0.25).batch_turn(2) == 4
    assert LanePolicy(batch_min_share=0).batch_turn(1) == 0


def test_with_one_slot_the_batch_lane_gets_every_fourth_turn_while_both_wait():
    scheduler = Scheduler(LanePolicy(batch_min_share=0.25), LimitBook(), slots=1)
    add(scheduler, BOB, BATCH, 3, "b")
    add(scheduler, ALICE_A, INTERACTIVE, 9, "i")
    assert run(scheduler, 12) == ["i0", "i1", "i2", "b0", "i3", "i4", "i5", "b1", "i6", "i7",
                                  "i8", "b2"]


def test_tenants_of_a_lane_take_turns_each_in_its_own_order():
    scheduler = Scheduler(LanePolicy(), LimitBook(), slots=1)
    add(scheduler, ALICE_A, BATCH, 4, "a")
    add(scheduler, BOB, BATCH, 2, "b")
    add(scheduler, ALICE_B, BATCH, 1, "c")
    assert run(scheduler, 7) == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]


def test_without_fairness_a_lane_serves_in_arrival_order():
    scheduler = Scheduler(LanePolicy(fair=False), LimitBook(), slots=1)
    add(scheduler, ALICE_A, BATCH, 3, "a")
    add(scheduler, BOB, BATCH, 2, "b")
    assert run(scheduler, 5) == ["a0", "a1", "a2", "b0", "b1"]


def test_a_user_at_its_slot_limit_is_passed_over_until_one_of_its_items_ends():
    limits = LimitBook(UserLimits(max_concurrent=2), {1001: UserLimits(max_concurrent=1)})
    scheduler = Scheduler(LanePolicy(), limits, slots=8)
    alice = add(scheduler, ALICE_A, INTERACTIVE, 2, "a") + add(scheduler, ALICE_B, INTERACTIVE, 2, "x")
    add(scheduler, BOB, INTERACTIVE, 3, "b")
    # Both apps of uid 1000 share its two slots; uid 1001 has one of its own.
    assert sorted(run(scheduler, 8, finish=False)) == ["a0", "b0", "x0"]
    assert scheduler.next() is None and scheduler.queued == 4
    scheduler.finished(alice[0])
    assert run(scheduler, 1, finish=False) == ["a1"]


def test_dropped_items_leave_the_counts_at_once_and_are_never_handed_out():
    scheduler = Scheduler(LanePolicy(), LimitBook(), slots=1)
    items = add(scheduler, ALICE_A, BATCH, 200, "a")
    for item in items[:150]:
        item.state = "dropped"
        scheduler.dropped(item)
    assert scheduler.queued == 50 and scheduler.queued_for(1000) == 50
    assert run(scheduler, 1) == ["a150"]
    assert [t.name for t in scheduler.take_all()] == [f"a{i}" for i in range(151, 200)]
    assert scheduler.queued == 0 and scheduler.next() is None


@pytest.mark.parametrize("policy", [LanePolicy(), LanePolicy(fair=False), LanePolicy(lanes=False)])
def test_every_queued_item_is_handed_out_exactly_once(policy):
    scheduler = Scheduler(policy, LimitBook(UserLimits(max_concurrent=3)), slots=4)
    expected = {item.name for tenant, lane, prefix in [(ALICE_A, BATCH, "a"), (ALICE_B, INTERACTIVE, "i"),
                                                       (BOB, BATCH, "b")]
                for item in add(scheduler, tenant, lane, 30, prefix)}
    assert sorted(run(scheduler, 200)) == sorted(expected)
    assert scheduler.lane_counts() == {INTERACTIVE: {"queued": 0, "in_flight": 0},
                                       BATCH: {"queued": 0, "in_flight": 0}}
