"""Benchmark: sharing 8 slots between a big batch and a person waiting, and between two batches.

Every figure is measured in this one run, against stand-ins that take about
0.2 s per item (10 tokens at 20 ms) with 8 workers, once with lanes and fair
turns on (the default) and once with both off (one queue in arrival order:
the daemon before issue 13):

1. A tenant runs a 1,000-prompt batch while another sends one interactive
   generate every 0.5 s: the interactive requests' queue wait (the daemon's
   own ``queue_wait``), p50/p99, against one item time (goal: p99 <= 0.2 s
   with lanes; with FIFO they wait behind the batch).
2. Two tenants each start a 500-prompt batch a second apart: their
   completion rates (items per second) from when the second one's first item
   could have ended to when either ended (goal: within 10 % of each other).
3. A batch alone: its time with lanes on against lanes off (goal: within 2 %).

Item completion times come from each item's ``response_time`` (from when the
daemon received the batch to when the item finished).

Usage: python bench/fairness.py [--items N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from request_path import Daemon, percentile  # noqa: E402

from ollamad_client import Client, OllamadError  # noqa: E402

TOKEN_DELAY = 0.02
ITEM = {"max_tokens": 10}       # 10 tokens at 20 ms: 0.2 s an item
ITEM_TIME = 10 * TOKEN_DELAY
TIMEOUT = 600.0


def start(directory: Path, lanes: bool) -> Daemon:
    on = "true" if lanes else "false"
    return Daemon(directory, TOKEN_DELAY, workers=8,
                  top="max_batch = 2000\nqueue_size = 4096\n",
                  ollama=f"probe_interval = 60.0\n[scheduling]\nlanes = {on}\nfair = {on}\n"
                         "[tenants]\nmax_queued = 10000\n")


def batch(socket: str, app: str, count: int, out: dict) -> None:
    """One batch op of ``count`` prompts; ``out``: when it was sent, and when each item ended."""
    with Client(socket, app=app, timeout=TIMEOUT) as client:
        sent = time.monotonic()
        items = client.batch([f"{app} item {i}" for i in range(count)], **ITEM)
    failed = [item for item in items if isinstance(item, OllamadError)]
    if failed:
        raise SystemExit(f"{app}: {len(failed)} items failed, first: {failed[0]}")
    out["sent"] = sent
    out["done"] = sorted(sent + item["response_time"] for item in items)
    out["elapsed"] = time.monotonic() - sent


def interactive_waits(daemon: Daemon, items: int) -> list[float]:
    """Queue waits of interactive generates sent every 0.5 s (each in its own thread, so
    that one waiting does not delay the next) while a batch of ``items`` runs."""
    result: dict = {}
    runner = threading.Thread(target=batch, args=(daemon.socket, "cleaning", items, result))
    runner.start()
    waits: list[float] = []
    senders = []
    with Client(daemon.socket, app="voice", timeout=TIMEOUT) as voice:
        time.sleep(1.0)                    # the batch is queued and running
        while runner.is_alive():
            sender = threading.Thread(target=lambda: waits.append(
                voice.generate("how did I do?", **ITEM)["queue_wait"]))
            sender.start()
            senders.append(sender)
            time.sleep(0.5)
        for sender in senders:
            sender.join()
    runner.join()
    return waits


def two_batches(daemon: Daemon, items: int) -> tuple[float, float]:
    """Items per second of each of two batches (the second sent 1 s later) while both run."""
    first, second = {}, {}
    a = threading.Thread(target=batch, args=(daemon.socket, "skills", items, first))
    b = threading.Thread(target=batch, args=(daemon.socket, "cleaning", items, second))
    a.start()
    time.sleep(1.0)
    b.start()
    a.join(), b.join()
    # From when the second batch's first item could end to when either batch ended.
    start_b = second["sent"] + ITEM_TIME
    end = min(first["done"][-1], second["done"][-1])

    def rate(run: dict) -> float:
        return sum(start_b <= t <= end for t in run["done"]) / max(end - start_b, 1e-9)
    return rate(first), rate(second)


def alone(daemon: Daemon, items: int) -> float:
    result: dict = {}
    batch(daemon.socket, "alone", items, result)
    return result["elapsed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2,
                        help="batch-alone runs per daemon, alternating (the best counts)")
    options = parser.parse_args()
    figures: dict[bool, dict] = {True: {"alone": []}, False: {"alone": []}}
    with tempfile.TemporaryDirectory(prefix="ollamad-fair-") as directory:
        daemons = {}
        try:
            for lanes in (True, False):
                (Path(directory) / str(lanes)).mkdir()
                daemons[lanes] = start(Path(directory) / str(lanes), lanes)
            for lanes, daemon in daemons.items():
                figures[lanes]["waits"] = interactive_waits(daemon, options.items)
                figures[lanes]["rates"] = two_batches(daemon, options.items // 2)
            # Alternating, so that whatever else the machine does falls on both alike.
            for _ in range(options.rounds):
                for lanes, daemon in daemons.items():
                    figures[lanes]["alone"].append(alone(daemon, options.items))
        finally:
            for daemon in daemons.values():
                daemon.stop()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"stand-in {ITEM_TIME:g} s an item, 8 workers")
    for lanes, name in ((True, "lanes + fair turns"), (False, "FIFO (both off)")):
        f = figures[lanes]
        waits, (rate_a, rate_b) = f["waits"], f["rates"]
        print(f"{name}:")
        print(f"  interactive queue wait during a {options.items}-item batch "
              f"({len(waits)} requests): p50 {percentile(waits, 0.5):.3f} s, "
              f"p99 {percentile(waits, 0.99):.3f} s = {percentile(waits, 0.99) / ITEM_TIME:.2f} "
              f"item times (goal with lanes: <= 1)")
        print(f"  two {options.items // 2}-item batches 1 s apart, while both run: "
              f"{rate_a:.1f} and {rate_b:.1f} items/s, ratio "
              f"{min(rate_a, rate_b) / max(rate_a, rate_b):.3f} (goal with fair turns: >= 0.90)")
        print(f"  a {options.items}-item batch alone: "
              + ", ".join(f"{t:.2f} s" for t in f["alone"]) + f" (ideal {options.items * ITEM_TIME / 8:.2f} s)")
    ratio = min(figures[True]["alone"]) / min(figures[False]["alone"])
    print(f"batch alone, lanes on / lanes off (best of {options.rounds}): {ratio:.3f} (goal: <= 1.02)")


if __name__ == "__main__":
    main()
