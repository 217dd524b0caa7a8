"""Benchmark: one client, several daemons (GPU hosts): how requests spread.

Every figure is measured in this one run, against real daemons whose
stand-ins take 0.1 s a request (10 tokens at 10 ms), each with 4 workers (a
host's slots), 8 callers sharing one client, closed loop:

1. Throughput with one endpoint against two (two daemons double the slots),
   and the share of the requests each daemon answered (its own counter).
2. One daemon slowed to 0.4 s a request (a busier or smaller GPU): the
   client's choice (fewest of its requests open, ties in turn) against plain
   round robin (the same client with the counts ignored): throughput and shares.

Usage: python bench/endpoints.py [--seconds S]
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
from request_path import Daemon  # noqa: E402

from ollamad_client import Client  # noqa: E402
from ollamad_client._endpoints import LeastOutstanding  # noqa: E402

TOKENS = 10
FAST_DELAY = 0.01       # 10 tokens at 10 ms: 0.1 s a request
SLOW_DELAY = 0.04       # 0.4 s a request
WORKERS = 4
CALLERS = 8


class RoundRobin(LeastOutstanding):
    """The comparison: counts nothing, so every choice is a tie, taken in turn."""

    def tally(self, index: int, change: int) -> None:
        pass


def served(socket: str) -> int:
    with Client(socket, timeout=10.0) as client:
        return client.metrics()["total_requests"]


def run(daemons: list[Daemon], seconds: float, round_robin: bool = False) -> dict:
    """8 callers on one client of ``daemons`` for ``seconds``: requests/s and each one's share."""
    before = [served(d.socket) for d in daemons]
    client = Client([d.socket for d in daemons], timeout=60.0)
    if round_robin:   # the client's routes ask this chooser from now on
        client._channels.chooser = RoundRobin(len(daemons))
    failures: list[Exception] = []
    stop = time.monotonic() + seconds

    def caller() -> None:
        while time.monotonic() < stop:
            try:
                client.generate("spread me", max_tokens=TOKENS)
            except Exception as exc:
                failures.append(exc)
                return
    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.monotonic() - started
    client.close()
    if failures:
        raise SystemExit(f"{len(failures)} callers failed, first: {failures[0]!r}")
    counts = [served(d.socket) - b for d, b in zip(daemons, before)]
    return {"rate": sum(counts) / elapsed, "shares": [c / sum(counts) for c in counts],
            "counts": counts}


def start(directory: Path, name: str, delay: float) -> Daemon:
    (directory / name).mkdir()
    return Daemon(directory / name, delay, workers=WORKERS,
                  ollama="probe_interval = 60.0\nwarm_model = false\n")


def shares(figures: dict) -> str:
    return " / ".join(f"{share:.0%} ({count})"
                      for share, count in zip(figures["shares"], figures["counts"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="odb-") as directory:
        daemons: list[Daemon] = []
        try:
            daemons = [start(Path(directory), "a", FAST_DELAY),
                       start(Path(directory), "b", FAST_DELAY)]
            one = run(daemons[:1], options.seconds)
            two = run(daemons, options.seconds)
            daemons.append(start(Path(directory), "slow", SLOW_DELAY))
            uneven = [daemons[0], daemons[2]]
            least = run(uneven, options.seconds)
            in_turn = run(uneven, options.seconds, round_robin=True)
        finally:
            for daemon in daemons:
                daemon.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {CALLERS} callers on one client, {WORKERS} workers a "
          f"daemon, {options.seconds:g} s a run")
    print(f"two daemons at {FAST_DELAY * TOKENS:g} s a request:")
    print(f"  one endpoint:  {one['rate']:6.1f} requests/s")
    print(f"  two endpoints: {two['rate']:6.1f} requests/s ({two['rate'] / one['rate']:.2f}x), "
          f"shares {shares(two)}")
    print(f"one daemon at {FAST_DELAY * TOKENS:g} s, the other slowed to "
          f"{SLOW_DELAY * TOKENS:g} s a request (fast / slow):")
    for name, figures in (("fewest open (the client)", least), ("plain round robin", in_turn)):
        print(f"  {name + ':':26}{figures['rate']:6.1f} requests/s, shares {shares(figures)}")


if __name__ == "__main__":
    main()
