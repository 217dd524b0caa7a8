"""Benchmark: how fast the supervisor recovers Ollama (the stand-in) from crash, wedge, SIGSTOP.

The supervisor runs in-process with the shipped defaults (``ollamad.config``)
plus what ``ollamad serve --stand-in`` sets: ``[ollama] stand_in = true``,
``url = "http://127.0.0.1:0"``; that is probe_interval 5 s, probe_timeout 2 s,
inference_probe_timeout 8 s, warm_model true, first restart immediate. The
stand-in starts, loads and generates instantly (its knobs set to 0). Flags
override the probe settings.

Measured, ``--rounds`` times each:
  * ``kill -9`` of the server -> RUNNING again (new pid), and -> the first
    successful generate sent straight to the new server over HTTP;
  * a wedge (the stand-in's ``hang`` fault: generation never answers, ``/``
    does) -> the supervisor declares it hung (STOPPING), and -> RUNNING again;
  * ``SIGSTOP`` of the server -> RUNNING again (new pid);
  * a wedge under load, through a real ``ollamad serve --stand-in``: 8
    generations in flight with 60 s deadlines when generation wedges -> the
    time until all 8 are served by the new Ollama (none may fail).

Wedges and SIGSTOPs are injected just after a probe round passed: the worst
case, a whole interval before the next probe.

Goals: recovery <= 1 s; a wedge detected, and a SIGSTOPped server running
again, within 3 probe intervals; every request caught by a wedge served.

Usage: python bench/recovery.py [--rounds N] [--probe-interval S] [--probe-timeout S]
                                [--inference-probe-timeout S]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time

from pathlib import Path

import requests

from ollamad.config import Config, OllamaSettings
from ollamad.supervisor import Supervisor
from ollamad_client import Client, OllamadError
from request_path import Daemon   # bench/ is this script's directory, first on sys.path

GENERATE = {"model": "llama3.1:8b", "prompt": "ping", "stream": False,
            "options": {"num_predict": 1}}


class Timeline:
    """State changes as the supervisor reports them, with the time each arrived."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: list[tuple[float, str, int | None]] = []

    def __call__(self, snapshot: dict) -> None:
        with self._cond:
            self._events.append((time.monotonic(), snapshot["state"], snapshot["pid"]))
            self._cond.notify_all()

    def wait(self, state: str, after: float, timeout: float, not_pid: int | None = None) -> float:
        """The time of the first change to ``state`` after ``after`` (and not by ``not_pid``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, seen, pid in self._events:
                    if at >= after and seen == state and (not_pid is None or pid != not_pid):
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {state} within {timeout} s")
                self._cond.wait(remaining)


@contextlib.contextmanager
def supervised(config: Config):
    timeline = Timeline()
    supervisor = Supervisor(config, on_change=timeline)
    supervisor.start()
    try:
        yield supervisor, timeline
    finally:
        supervisor.stop(10.0)


def first_generate(supervisor: Supervisor, deadline: float) -> float:
    """Send generates straight to Ollama until one succeeds; the time it came back."""
    while time.monotonic() < deadline:
        url = supervisor.url
        if url:
            try:
                reply = requests.post(url + "/api/generate", json=GENERATE, timeout=2)
                if reply.status_code == 200:
                    return time.monotonic()
            except requests.RequestException:
                pass
        time.sleep(0.005)
    raise TimeoutError("no successful generate")


def wait_warm(supervisor: Supervisor, timeout: float = 30.0) -> dict:
    """RUNNING, warm model loaded and its runner seen (so that a kill -9 leaves an orphan)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = supervisor.snapshot()
        if snap["state"] == "RUNNING" and snap["models"] and snap["process"] \
                and snap["process"]["runners"]:
            return snap
        time.sleep(0.01)
    raise TimeoutError("Ollama not warm")


def wait_probed(supervisor: Supervisor, timeout: float = 30.0) -> dict:
    """The snapshot as soon as a full probe round with an inference probe has passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = supervisor.snapshot()
        if snap["last_probe"] and snap["last_probe"].get("inference_ms") is not None \
                and snap["last_probe"]["ok"]:
            return snap
        time.sleep(0.002)
    raise TimeoutError("no inference probe")



def wedge_under_load(ollama_toml: str, callers: int = 8, deadline: float = 60.0) -> dict:
    """Through a real daemon: ``callers`` generations wedged in Ollama, each with a
    ``deadline``; how long until every one is served by the new Ollama."""
    with tempfile.TemporaryDirectory(prefix="od-bench-") as directory:
        daemon = Daemon(Path(directory), token_delay=0.0, ollama=ollama_toml)
        try:
            served: list[tuple[dict, float]] = []
            failed: list[OllamadError] = []
            with Client(daemon.socket, timeout=deadline + 10) as client:
                requests.post(daemon.url + "/_standin/faults", json={"kind": "hang"},
                              timeout=5).raise_for_status()
                wedged = time.monotonic()

                def call(i: int) -> None:
                    try:
                        result = client.generate(f"caught by the wedge {i}", timeout=deadline)
                        served.append((result, time.monotonic()))
                    except OllamadError as error:
                        failed.append(error)

                threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(deadline + 10)
                restarts = client.status()["ollama"]["restarts"]
        finally:
            daemon.stop()
    return {"served": len(served), "failed": len(failed),
            "last_served_s": max((at for _, at in served), default=wedged) - wedged,
            "attempts": sorted(result["attempts"] for result, _ in served),
            "restarts": restarts, "errors": sorted({error.code.value for error in failed})}


def row(name: str, values: list[float], goal: str) -> str:
    ms = [v * 1000 for v in values]
    return (f"  {name:34}{min(ms):9.0f}{statistics.median(ms):9.0f}{max(ms):9.0f}   {goal}")


def main() -> int:
    defaults = OllamaSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probe-interval", type=float, default=defaults.probe_interval)
    parser.add_argument("--probe-timeout", type=float, default=defaults.probe_timeout)
    parser.add_argument("--inference-probe-timeout", type=float,
                        default=defaults.inference_probe_timeout)
    ns = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for knob in ("STARTUP_DELAY", "LOAD_TIME", "TOKEN_DELAY"):
        os.environ[f"OLLAMAD_STANDIN_{knob}"] = "0"
    settings = dataclasses.replace(defaults, stand_in=True, url="http://127.0.0.1:0",
                                   probe_interval=ns.probe_interval,
                                   probe_timeout=ns.probe_timeout,
                                   inference_probe_timeout=ns.inference_probe_timeout)
    runtime_dir = tempfile.mkdtemp(prefix="ollamad-bench-")   # for the record of its Ollama
    config = Config(ollama=settings, runtime_dir=runtime_dir)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"config: [ollama] stand_in=true url=http://127.0.0.1:0 "
          f"probe_interval={settings.probe_interval:g} probe_timeout={settings.probe_timeout:g} "
          f"inference_probe_timeout={settings.inference_probe_timeout:g} "
          f"hang_after={settings.hang_after:g} "
          f"restart_backoff_initial={settings.restart_backoff_initial:g} "
          f"(first restart immediate) max_restarts={settings.max_restarts}")

    # A fresh supervisor per round: each failure is the first in its restart window, so
    # restarted at once (further failures in the window back off: 1 s, 2 s, ...).
    crash_running, crash_generate, wedge_detected, wedge_running, swept = [], [], [], [], 0
    stop_running = []
    for _ in range(ns.rounds):
        with supervised(config) as (supervisor, timeline):
            pid = wait_warm(supervisor)["pid"]
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            crash_running.append(timeline.wait("RUNNING", killed, 30, not_pid=pid) - killed)
            crash_generate.append(first_generate(supervisor, killed + 30) - killed)
            swept += supervisor.snapshot()["orphans_swept"]
    for _ in range(ns.rounds):
        with supervised(config) as (supervisor, timeline):
            # Injected just after an inference probe answered: the worst case, the wedge
            # waits a whole interval for the next inference probe, then its time-out.
            wait_warm(supervisor)
            snap = wait_probed(supervisor)
            wedged = time.monotonic()
            requests.post(snap["url"] + "/_standin/faults", json={"kind": "hang", "count": None},
                          timeout=5).raise_for_status()
            budget = 3 * settings.probe_interval + settings.inference_probe_timeout + 30
            wedge_detected.append(timeline.wait("STOPPING", wedged, budget) - wedged)
            wedge_running.append(timeline.wait("RUNNING", wedged, 30, not_pid=snap["pid"]) - wedged)
    for _ in range(ns.rounds):
        with supervised(config) as (supervisor, timeline):
            wait_warm(supervisor)
            snap = wait_probed(supervisor)
            stopped = time.monotonic()
            os.kill(snap["pid"], signal.SIGSTOP)
            budget = 3 * settings.probe_interval + settings.stop_grace + 30
            stop_running.append(timeline.wait("RUNNING", stopped, budget, not_pid=snap["pid"])
                                - stopped)

    probes = (f"probe_interval = {settings.probe_interval!r}\nprobe_timeout = "
              f"{settings.probe_timeout!r}\ninference_probe_timeout = "
              f"{settings.inference_probe_timeout!r}\n")
    under_load = wedge_under_load(probes)

    interval_ms = settings.probe_interval * 1000
    print(f"\nrecovery over {ns.rounds} rounds each (ms):")
    print(f"  {'':34}{'min':>9}{'median':>9}{'max':>9}   goal")
    print(row("kill -9 -> RUNNING", crash_running, "<= 1000"))
    print(row("kill -9 -> first generate reply", crash_generate, "<= 1000"))
    bound_ms = (settings.probe_interval + settings.inference_probe_timeout) * 1000
    print(row("wedge -> detected (STOPPING)", wedge_detected,
              f"<= {3 * interval_ms:.0f} (3 probe intervals); "
              f"bound: interval + inference time-out = {bound_ms:.0f}"))
    print(row("wedge -> RUNNING again", wedge_running, ""))
    print(row("SIGSTOP -> RUNNING again", stop_running,
              f"<= {3 * interval_ms:.0f} (3 probe intervals); bound: interval + probe "
              f"time-out = {(settings.probe_interval + settings.probe_timeout) * 1000:.0f}, "
              f"plus the restart"))
    print(f"orphaned runners swept after the kills: {swept}")
    print(f"\nwedge under load, through the daemon: {under_load['served']} of 8 requests "
          f"(60 s deadlines) served, {under_load['failed']} failed {under_load['errors']}, "
          f"the last {under_load['last_served_s']:.1f} s after the wedge; attempts "
          f"{under_load['attempts']}; {under_load['restarts']} restart(s)")
    missed = [name for name, ok in [
        ("every request caught by a wedge served", under_load["failed"] == 0),
        ("recovery <= 1 s", max(crash_generate) <= 1.0),
        ("wedge detected within 3 probe intervals",
         max(wedge_detected) <= 3 * settings.probe_interval),
        ("SIGSTOP recovered within 3 probe intervals",
         max(stop_running) <= 3 * settings.probe_interval)] if not ok]
    print("goals met" if not missed else "missed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
