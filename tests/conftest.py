"""Fixtures shared by every test folder.

``reaper`` starts real processes in sessions of their own and, whatever the
test did, kills every process group and descendant it knows of at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest


class Reaper:
    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []
        self._pids: set[int] = set()

    def spawn(self, argv: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def python(self, *args: str, **kwargs) -> subprocess.Popen:
        return self.spawn([sys.executable, *args], **kwargs)

    def track(self, *pids: int | None) -> None:
        """Also kill these (e.g. processes a daemon under test started)."""
        self._pids.update(pid for pid in pids if pid)

    def _known(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        roots = [p.pid for p in self._procs] + sorted(self._pids)
        for pid in roots:
            try:
                root = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
        return list(found.values())

    def cleanup(self) -> None:
        victims = self._known()
        groups = set()
        for proc in victims:
            try:
                groups.add(os.getpgid(proc.pid))
            except ProcessLookupError:
                pass
        for pgid in groups - {os.getpgrp()}:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in victims:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=5)
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def reaper():
    r = Reaper()
    try:
        yield r
    finally:
        r.cleanup()


@pytest.fixture(scope="module")
def module_reaper():
    """A reaper for what a module-scoped fixture starts (a daemon shared by read-only tests)."""
    r = Reaper()
    try:
        yield r
    finally:
        r.cleanup()


def _wait_for(condition, timeout: float = 5.0, what: str = "condition"):
    """Poll ``condition`` until it returns something truthy (returned), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="session")
def wait_for():
    """``wait_for(condition, timeout=5, what=...)``: poll with a deadline."""
    return _wait_for


@pytest.fixture(scope="session")
def wait_until():
    """The same as ``wait_for``, under the name some folders use."""
    return _wait_for


@pytest.fixture
def registry_factory():
    """``start(models, rate=0)``: a test registry process (:mod:`ollamad.testing.registry`)
    serving ``models`` (``"library/tiny:v1"``, ``"library/slow:v1=400000"``); all stopped
    at teardown."""
    from ollamad.testing.registry import RegistryProcess

    started: list[RegistryProcess] = []

    def start(models=("library/tiny:v1",), rate: int = 0) -> RegistryProcess:
        registry = RegistryProcess(models, rate=rate)
        started.append(registry)
        return registry.start()

    try:
        yield start
    finally:
        for registry in started:
            registry.stop()


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on (bound, then closed: connections are refused)."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
