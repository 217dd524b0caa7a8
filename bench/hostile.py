"""What a hostile or careless client costs the daemon: memory, another client's latency, cancellation.

In one run against `ollamad serve --stand-in`:

* memory: RSS of the daemon after 600 answered 3.5 MB requests (deadline 1 h);
* flood: another client's ping latency (p50/p99) while one client floods
  3 MB messages as fast as the daemon takes them;
* cancellation: from a client's `cancel` (and from a client process being
  killed) to the stand-in's generation ending, as the stand-in counts it.

Usage: python bench/hostile.py
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from request_path import Daemon, percentile  # noqa: E402

from ollamad_client import Client, protocol  # noqa: E402


def dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def request(sock: zmq.Socket, rid: str, op: str, timeout: float = 60.0, stream: bool = False,
            **args) -> None:
    sock.send(protocol.encode_request(protocol.Request(id=rid, op=op, args=args, timeout=timeout,
                                                       stream=stream)))


def final(sock: zmq.Socket, rid: str) -> protocol.Reply:
    while True:
        if not sock.poll(30_000):
            raise SystemExit(f"no reply to {rid}")
        reply = protocol.decode_reply(sock.recv())
        if reply.id == rid and reply.final:
            return reply


def memory(daemon: Daemon) -> tuple[float, float]:
    process = psutil.Process(daemon.process.pid)
    before = process.memory_info().rss
    sock = dealer(daemon.socket)
    big = "x" * 3_500_000
    for i in range(600):
        request(sock, f"m{i}", "generate", timeout=3600.0, prompt=big, model="absent")
        final(sock, f"m{i}")
    sock.close()
    return before / 2**20, process.memory_info().rss / 2**20


def flood(daemon: Daemon) -> list[float]:
    stop = threading.Event()
    pad = "y" * 3_000_000

    def flooder() -> None:
        sock = dealer(daemon.socket)
        sock.setsockopt(zmq.SNDHWM, 8)
        n = 0
        while not stop.is_set():
            try:
                sock.send(json.dumps({"v": 1, "id": f"f{n}", "op": "ping", "args": {"pad": pad}})
                          .encode(), zmq.NOBLOCK)
                n += 1
            except zmq.Again:
                while sock.poll(0):
                    sock.recv()
                time.sleep(0.001)
        sock.close()

    thread = threading.Thread(target=flooder)
    thread.start()
    latencies = []
    with Client(daemon.socket, timeout=10.0) as client:
        time.sleep(0.5)  # the flood is under way
        for _ in range(300):
            started = time.monotonic()
            client.ping()
            latencies.append(time.monotonic() - started)
    stop.set()
    thread.join(10)
    return latencies


def generations(daemon: Daemon) -> int:
    return requests.get(daemon.url + "/_standin/state", timeout=5).json()["stats"]["generations_in_flight"]


def wait_generations(daemon: Daemon, count: int, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if generations(daemon) == count:
            return time.monotonic()
        time.sleep(0.002)
    raise SystemExit(f"generations in flight never reached {count}")


def cancellation(daemon: Daemon, rounds: int = 10) -> tuple[list[float], list[float]]:
    by_op, by_close = [], []
    for i in range(rounds):
        sock = dealer(daemon.socket)
        request(sock, f"c{i}", "generate", stream=True, prompt=f"long story {i}")
        wait_generations(daemon, 1)
        started = time.monotonic()
        request(sock, f"x{i}", "cancel", id=f"c{i}")
        by_op.append(wait_generations(daemon, 0) - started)
        sock.close()
        sock = dealer(daemon.socket)
        request(sock, f"d{i}", "generate", prompt=f"another story {i}")
        wait_generations(daemon, 1)
        started = time.monotonic()
        sock.close()
        by_close.append(wait_generations(daemon, 0) - started)
    return by_op, by_close


def main() -> None:
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="odb-") as directory:
        daemon = Daemon(Path(directory), token_delay=0.0)
        try:
            before, after = memory(daemon)
            print(f"memory: RSS {before:.0f} MiB at start, {after:.0f} MiB after 600 answered "
                  f"3.5 MB requests")
            latencies = flood(daemon)
            print(f"flood of 3 MB messages: another client's ping p50 "
                  f"{statistics.median(latencies) * 1000:.1f} ms, p99 "
                  f"{percentile(latencies, 0.99) * 1000:.1f} ms ({len(latencies)} pings)")
        finally:
            daemon.stop()
    with tempfile.TemporaryDirectory(prefix="odb-") as directory:
        daemon = Daemon(Path(directory), token_delay=0.2)
        try:
            by_op, by_close = cancellation(daemon)
            print(f"cancellation to Ollama's generation ending: cancel op p50 "
                  f"{statistics.median(by_op) * 1000:.0f} ms (max {max(by_op) * 1000:.0f}); "
                  f"client gone p50 {statistics.median(by_close) * 1000:.0f} ms "
                  f"(max {max(by_close) * 1000:.0f}); the stand-in sees it at its next token "
                  f"(0.2 s apart)")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
