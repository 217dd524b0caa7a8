"""Benchmark: the daemon path (client -> ollamad -> stand-in) against direct HTTP.

Measured in one run, against the same stand-in process (the one the daemon
supervises), with zero token delay:
  * sequential latency, p50 and p99, and what the daemon adds (a third row,
    direct HTTP *streamed*, is what the daemon itself does towards Ollama, so
    the difference to it is the cost of ZeroMQ and the worker hand-offs);
  * throughput with 8 concurrent callers (own client / own Session each).
Then, with a second daemon whose stand-in takes 1 s per generation and has
8 slots: a batch of 8 and a batch of 64 prompts, against the ideal 1 s / 8 s.

Usage: python bench/request_path.py [--requests N] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

from ollamad_client import Client

PROMPT = "Benchmark prompt"
BODY = {"model": "llama3.1:8b", "prompt": PROMPT, "stream": False, "options": {"num_predict": 16}}


class Daemon:
    """`ollamad serve --stand-in` in its own session, stopped with its whole tree."""

    def __init__(self, directory: Path, token_delay: float, workers: int = 8,
                 ollama: str = "probe_interval = 30.0\n", top: str = ""):
        """``ollama``: more keys of the [ollama] section, as TOML lines (tables may
        follow them); ``top``: more top-level keys."""
        self.socket = f"ipc://{directory}/ollamad.sock"
        config = directory / "ollamad.toml"
        config.write_text(f'socket = "{self.socket}"\nworkers = {workers}\nlog_level = "warning"\n'
                          + top + '[ollama]\nstand_in = true\nurl = "http://127.0.0.1:0"\n' + ollama)
        env = {**os.environ, "OLLAMAD_CONFIG": str(config),
               "OLLAMAD_STANDIN_TOKEN_DELAY": str(token_delay), "OLLAMAD_STANDIN_LOAD_TIME": "0",
               "OLLAMAD_STANDIN_PROMPT_RATE": "0"}
        self.process = subprocess.Popen([sys.executable, "-m", "ollamad", "serve"], env=env,
                                        start_new_session=True, stdin=subprocess.DEVNULL)
        self.url = self._wait_running()

    def _wait_running(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        with Client(self.socket, timeout=2.0, connect_timeout=0.5) as client:
            while time.monotonic() < deadline:
                try:
                    ollama = client.status()["ollama"]
                    if ollama["state"] == "RUNNING":
                        return ollama["url"]
                except Exception:
                    pass
                time.sleep(0.1)
        raise SystemExit("daemon did not come up")

    def stop(self) -> None:
        tree = [psutil.Process(self.process.pid)]
        tree += tree[0].children(recursive=True)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for proc in tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def sequential(call, n: int) -> list[float]:
    for _ in range(20):  # warm up connections and code paths
        call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def throughput(make_call, seconds: float, callers: int = 8) -> float:
    done = [0] * callers
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        call = make_call()
        while time.monotonic() < stop:
            call()
            done[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return sum(done) / (time.monotonic() - started)


def direct_call(url: str):
    session = requests.Session()
    session.trust_env = False

    def call():
        response = session.post(url + "/api/generate", json=BODY, timeout=10)
        response.raise_for_status()
        return response.json()
    return call


def direct_stream_call(url: str):
    """What the daemon itself does: stream from Ollama (progress evidence)."""
    session = requests.Session()
    session.trust_env = False

    def call():
        with session.post(url + "/api/generate", json={**BODY, "stream": True}, stream=True,
                          timeout=10) as response:
            response.raise_for_status()
            return [json.loads(line) for line in response.iter_lines(chunk_size=None) if line]
    return call


def daemon_call(socket: str):
    client = Client(socket, timeout=10.0)
    return lambda: client.generate(PROMPT, max_tokens=16)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    ns = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="odb-") as tmp:
        fast = Daemon(Path(tmp), token_delay=0.0)
        try:
            direct = sequential(direct_call(fast.url), ns.requests)
            streamed = sequential(direct_stream_call(fast.url), ns.requests)
            via = sequential(daemon_call(fast.socket), ns.requests)
            direct_rps = throughput(lambda: direct_call(fast.url), ns.seconds)
            via_rps = throughput(lambda: daemon_call(fast.socket), ns.seconds)
        finally:
            fast.stop()
        slow_dir = Path(tmp) / "slow"
        slow_dir.mkdir()
        # 20 tokens at 50 ms: one second of stand-in time per prompt.
        slow = Daemon(slow_dir, token_delay=0.05)
        try:
            with Client(slow.socket, timeout=120.0) as client:
                client.generate("warm", max_tokens=1)
                timings = {}
                for size in (8, 64):
                    start = time.perf_counter()
                    results = client.batch([f"batch prompt {i}" for i in range(size)], max_tokens=20)
                    timings[size] = time.perf_counter() - start
                    assert all(isinstance(r, dict) for r in results), results
        finally:
            slow.stop()

    d50, d99 = percentile(direct, 0.5) * 1e3, percentile(direct, 0.99) * 1e3
    v50, v99 = percentile(via, 0.5) * 1e3, percentile(via, 0.99) * 1e3
    print(f"sequential latency over {ns.requests} requests (ms):")
    print(f"  {'':22}{'p50':>8}{'p99':>8}{'mean':>8}")
    print(f"  {'direct HTTP':22}{d50:8.3f}{d99:8.3f}{statistics.mean(direct) * 1e3:8.3f}")
    print(f"  {'direct HTTP, streamed':22}{percentile(streamed, 0.5) * 1e3:8.3f}"
          f"{percentile(streamed, 0.99) * 1e3:8.3f}{statistics.mean(streamed) * 1e3:8.3f}")
    print(f"  {'client->daemon':22}{v50:8.3f}{v99:8.3f}{statistics.mean(via) * 1e3:8.3f}")
    print(f"  {'added by the daemon':22}{v50 - d50:8.3f}{v99 - d99:8.3f}"
          f"   (goals: p50 <= 0.25, p99 <= 1.0)")
    print(f"throughput, 8 callers, {ns.seconds:g} s: direct {direct_rps:.0f}/s, "
          f"daemon {via_rps:.0f}/s, ratio {via_rps / direct_rps:.2f} (goal >= 0.90)")
    print(f"batch of 8 at 1 s each, 8 slots: {timings[8]:.2f} s "
          f"(ideal 1.00 s, ratio {timings[8] / 1.0:.2f}; goal <= 1.10 s)")
    print(f"batch of 64 at 1 s each, 8 slots: {timings[64]:.2f} s "
          f"(ideal 8.00 s, ratio {timings[64] / 8.0:.2f}; goal <= 8.4 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
