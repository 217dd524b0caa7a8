"""Throughput of the Ollama stand-in: how fast can it answer non-streamed generates?

Starts a stand-in (no token delay, no load time), warms the model up, then
runs N threads, each with its own keep-alive `requests.Session`, sending
non-streamed /api/generate requests until the time or request budget is
spent. Prints requests/s and latency percentiles. Client and server share the
machine, so the figure is a floor for what the stand-in alone can do.

    python bench/standin_throughput.py [--seconds 5] [--max-requests 20000] [--threads 8]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import requests

from ollamad.testing import StandIn


def _worker(url: str, model: str, deadline: float, budget: threading.Semaphore,
            latencies: list[float], errors: list[str], worker: int):
    with requests.Session() as session:
        index = 0
        while time.monotonic() < deadline and budget.acquire(blocking=False):
            body = {"model": model, "prompt": f"question {worker}-{index % 50}", "stream": False}
            started = time.perf_counter()
            try:
                answer = session.post(url, json=body, timeout=10)
                if answer.status_code != 200:
                    errors.append(f"{answer.status_code} {answer.text[:80]}")
            except requests.RequestException as exc:
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - started)
            index += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--model", default="llama3.1:8b")
    args = parser.parse_args()

    with StandIn(token_delay=0.0, load_time=0.0, num_parallel=args.threads) as standin:
        url = standin.url + "/api/generate"
        requests.post(url, json={"model": args.model}, timeout=10).raise_for_status()
        latencies: list[float] = []  # list.append is atomic: no lock needed
        errors: list[str] = []
        budget = threading.Semaphore(args.max_requests)
        started = time.monotonic()
        deadline = started + args.seconds
        threads = [threading.Thread(target=_worker, daemon=True,
                                    args=(url, args.model, deadline, budget, latencies, errors, n))
                   for n in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.seconds + 15)
        elapsed = time.monotonic() - started
        in_flight_peak = standin.state()["stats"]["max_generations_in_flight"]

    quantiles = statistics.quantiles(latencies, n=100)
    print(f"{len(latencies)} requests in {elapsed:.2f} s with {args.threads} threads: "
          f"{len(latencies) / elapsed:.0f} requests/s")
    print(f"latency p50 {quantiles[49] * 1000:.2f} ms, p99 {quantiles[98] * 1000:.2f} ms, "
          f"max {max(latencies) * 1000:.2f} ms; peak generations in flight {in_flight_peak}")
    if errors:
        print(f"{len(errors)} errors, first: {errors[0]}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
