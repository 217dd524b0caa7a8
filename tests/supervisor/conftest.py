"""Fixtures: supervisors driven in-process, with every process they start killed at teardown."""

from __future__ import annotations

import itertools
import os
import threading

import psutil
import pytest

from ollamad.config import Config, OllamaSettings
from ollamad.supervisor import Supervisor, System

#: Small intervals so that failures are found within a second or two.
FAST = dict(url="http://127.0.0.1:0", stand_in=True, probe_interval=0.2, probe_timeout=1.0,
            inference_probe_timeout=0.5, hang_after=0.5, startup_timeout=15.0, stop_grace=2.0,
            restart_backoff_initial=0.1, restart_backoff_max=0.4, max_restarts=3,
            restart_window=60.0, keep_alive="5m")
MODEL = "llama3.1:8b"   # the stand-in's default catalogue has it


@pytest.fixture(autouse=True)
def quick_standin(monkeypatch):
    """The stand-in starts, loads and generates at once unless a test says otherwise."""
    for knob in ("STARTUP_DELAY", "LOAD_TIME", "TOKEN_DELAY"):
        monkeypatch.setenv(f"OLLAMAD_STANDIN_{knob}", "0")
    monkeypatch.delenv("OLLAMAD_STANDIN_FAULTS", raising=False)


class RecordingSystem(System):
    """The real system calls, recorded: what was spawned, signalled and run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spawned: list[int] = []
        self.processes: list[psutil.Process] = []   # carry create times: safe to kill later
        self.signals: list[tuple[str, int, int]] = []   # ("kill"|"killpg", pid, signal)
        self.alive_when_killed: set[int] = set()        # pids that were running when kill() came
        self.commands: list[list[str]] = []

    def spawn(self, argv, env):
        proc = super().spawn(argv, env)
        with self.lock:
            self.spawned.append(proc.pid)
            self.processes.append(psutil.Process(proc.pid))
        return proc

    def killpg(self, pgid, sig):
        with self.lock:
            self.signals.append(("killpg", pgid, int(sig)))
        return super().killpg(pgid, sig)

    def kill(self, pid, sig):
        with self.lock:
            self.signals.append(("kill", pid, int(sig)))
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    self.alive_when_killed.add(pid)
            except psutil.NoSuchProcess:
                pass
        return super().kill(pid, sig)

    def run(self, argv, env, timeout):
        with self.lock:
            self.commands.append(list(argv))
        return super().run(argv, env, timeout)


@pytest.fixture
def make_config(tmp_path):
    """``make_config(model=..., workers=..., **ollama_settings)``: FAST settings plus overrides,
    and a runtime directory of its own (for the record of its Ollama)."""
    made = itertools.count()

    def make(model: str = MODEL, workers: int = 2, **ollama) -> Config:
        runtime_dir = tmp_path / f"run{next(made)}"
        runtime_dir.mkdir()
        return Config(model=model, workers=workers, runtime_dir=str(runtime_dir),
                      ollama=OllamaSettings(**{**FAST, **ollama}))
    return make


def leftovers(roots: list[psutil.Process]) -> list[psutil.Process]:
    """Live processes of these servers' trees: descendants, and members of their sessions
    created after them (orphaned runners)."""
    found = {}
    for root in roots:
        created = root.create_time()
        try:
            found.update((child.pid, child) for child in root.children(recursive=True))
        except psutil.Error:
            pass
        for process in psutil.process_iter():
            try:
                if process.pid == os.getpid():
                    continue
                if (os.getsid(process.pid) == root.pid and process.create_time() >= created) \
                        or (process.pid == root.pid and root.is_running()):
                    found[process.pid] = process
            except (OSError, psutil.Error):
                pass
    return [p for p in found.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def supervise():
    """``supervise(config, progress=...) -> (supervisor, system, states)``; stopped at teardown."""
    made: list[tuple[Supervisor, RecordingSystem]] = []

    def start(config: Config, progress=lambda: (0, None), start=True):
        system = RecordingSystem()
        states: list[str] = []
        supervisor = Supervisor(config, system=system, progress=progress,
                                on_change=lambda snap: states.append(snap["state"]))
        made.append((supervisor, system))
        if start:
            supervisor.start()
        return supervisor, system, states

    yield start
    try:
        for supervisor, _ in made:
            supervisor.stop(10.0)
    finally:
        for _, system in made:
            for process in leftovers(system.processes):
                try:
                    process.kill()
                except psutil.Error:
                    pass
