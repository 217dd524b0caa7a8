"""The worker pool: all-or-nothing admission, expiry without running, warm-worker reuse."""

import threading
import time

from ollamad.scheduling.pool import ProgressTracker, Task, WorkerPool


def task(run, deadline_in=5.0, expired=None, cancel=None):
    return Task(run=run, expire=lambda error: expired.append(error) if expired is not None else None,
                deadline=time.monotonic() + deadline_in, cancel=cancel or threading.Event())


def test_a_batch_goes_in_whole_while_there_is_room_and_not_once_it_is_full():
    pool = WorkerPool(1, capacity=3)  # not started: nothing leaves the queue
    assert pool.submit([task(lambda: None) for _ in range(2)]) is None
    # One place is free: a batch of 5 is not starved out by the two queued.
    assert pool.submit([task(lambda: None) for _ in range(5)]) is None
    assert pool.depth() == 7
    assert pool.submit([task(lambda: None)]).limit == "queue_size"
    assert len(pool.drain()) == 7 and pool.depth() == 0


def test_a_dropped_task_leaves_the_queue_at_once_and_never_runs(wait_for):
    pool = WorkerPool(1, capacity=2)
    ran = []
    first = [task(lambda: ran.append("first"))]
    assert pool.submit(first) is None and pool.submit([task(lambda: ran.append("second"))]) is None
    assert pool.submit([task(lambda: None)]).limit == "queue_size"
    pool.drop(first)          # its request timed out while it waited
    assert pool.depth() == 1 and pool.submit([task(lambda: ran.append("third"))]) is None
    pool.start()
    try:
        wait_for(lambda: len(ran) == 2, 5, "the live tasks to run")
        assert ran == ["second", "third"]
    finally:
        assert pool.stop(5)


def test_a_task_past_its_deadline_is_expired_not_run(wait_for):
    pool = WorkerPool(1, capacity=10)
    ran, expired = [], []
    pool.submit([task(lambda: ran.append(1), deadline_in=-1, expired=expired)])
    pool.start()
    try:
        wait_for(lambda: expired, 5, "the expiry")
        assert ran == [] and expired == [None]
    finally:
        assert pool.stop(5)


def test_sequential_work_stays_on_one_warm_worker(wait_for):
    pool = WorkerPool(8, capacity=10)
    pool.start()
    try:
        wait_for(lambda: len(pool._idle) == 8, 5, "all workers idle")
        names = []
        for _ in range(20):
            done = threading.Event()
            pool.submit([task(lambda: (names.append(threading.current_thread().name), done.set()))])
            assert done.wait(5)
            wait_for(lambda: pool.busy() == 0, 5, "idle again")
        assert len(set(names)) == 1
    finally:
        assert pool.stop(5)


def test_progress_counts_chunks_not_arrivals():
    now = [100.0]
    tracker = ProgressTracker(clock=lambda: now[0])
    assert tracker() == (0, None)
    tracker.begin()
    now[0] = 110.0
    tracker.begin()           # a new arrival does not reset the evidence
    assert tracker() == (2, 10.0)
    tracker.touch()           # a chunk does
    assert tracker() == (2, 0.0)
    tracker.end(), tracker.end()
    assert tracker() == (0, None)
