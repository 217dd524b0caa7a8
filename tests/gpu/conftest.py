"""Fixtures for the GPU watch: a scripted NVML, a settable clock, a real process tree.

:class:`FakeNvml` stands in for the ``pynvml`` module at the one seam
ollamad has (``NvmlReader(nvml=...)``): the same function names and the real
exception classes and constants, re-exported from the installed pynvml, so a
test raises exactly what the real module would. Tests script it by editing
:class:`FakeGpu` fields between polls and wait for a poll to show the change
(:func:`poll_until`), never by sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import psutil
import pynvml as real_pynvml
import pytest

from ollamad.gpu import GpuMonitor

GiB = 1024 ** 3
MiB = 1024 ** 2


@dataclass
class FakeGpu:
    """One scripted GPU. ``failures`` maps an NVML function name to the error class it raises."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    memory_total: int = 80 * GiB
    memory_used: int = 1 * GiB
    memory_reserved: int = 512 * MiB
    utilization_gpu: int = 10
    utilization_memory: int = 5
    temperature_c: int = 40
    power_mw: int = 70_000
    power_limit_mw: int = 700_000
    compute_processes: list[tuple[int, int | None]] = field(default_factory=list)
    graphics_processes: list[tuple[int, int | None]] = field(default_factory=list)
    failures: dict[str, type[Exception]] = field(default_factory=dict)


class FakeNvml:
    """A stand-in for the ``pynvml`` module with scripted GPUs."""

    NVML_TEMPERATURE_GPU = real_pynvml.NVML_TEMPERATURE_GPU
    nvmlEventTypeXidCriticalError = real_pynvml.nvmlEventTypeXidCriticalError
    nvmlMemory_v2 = real_pynvml.nvmlMemory_v2

    def __init__(self, driver_version: str = "550.54.15", names_as_bytes: bool = False) -> None:
        self.gpus: list[FakeGpu] = []
        self.driver_version = driver_version
        self.names_as_bytes = names_as_bytes
        self.init_error: type[Exception] | None = None
        self.count_error: type[Exception] | None = None
        #: (gpu index, xid) pairs the next nvmlEventSetWait calls deliver.
        self.xid_queue: deque[tuple[int, int]] = deque()
        self.calls: Counter[str] = Counter()
        self.initialised = 0
        self.open_event_sets = 0

    def add_gpu(self, **fields: Any) -> FakeGpu:
        index = len(self.gpus)
        fields.setdefault("uuid", f"GPU-{index:08d}-0000-0000-0000-000000000000")
        gpu = FakeGpu(**fields)
        self.gpus.append(gpu)
        return gpu

    # -- helpers -----------------------------------------------------------

    def _enter(self, function: str) -> None:
        self.calls[function] += 1
        if not self.initialised:
            raise real_pynvml.NVMLError_Uninitialized()

    def _gpu(self, handle: SimpleNamespace, function: str) -> FakeGpu:
        self._enter(function)
        gpu = self.gpus[handle.index]
        if function in gpu.failures:
            raise gpu.failures[function]()
        return gpu

    def _string(self, value: str) -> str | bytes:
        return value.encode() if self.names_as_bytes else value

    @staticmethod
    def _processes(entries: list[tuple[int, int | None]]) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF,
                                computeInstanceId=0xFFFFFFFF) for pid, used in entries]

    # -- the pynvml functions ollamad calls --------------------------------

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise self.init_error()
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._enter("nvmlSystemGetDriverVersion")
        return self._string(self.driver_version)

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        if self.count_error is not None:
            raise self.count_error()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:
        handle = SimpleNamespace(index=index)  # a new object each time, like ctypes handles
        self._gpu(handle, "nvmlDeviceGetHandleByIndex")
        return handle

    def nvmlDeviceGetName(self, handle):
        return self._string(self._gpu(handle, "nvmlDeviceGetName").name)

    def nvmlDeviceGetUUID(self, handle):
        return self._string(self._gpu(handle, "nvmlDeviceGetUUID").uuid)

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        if version is None:
            gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
            # v1 counts driver-reserved memory as used
            return SimpleNamespace(total=gpu.memory_total, used=gpu.memory_used + gpu.memory_reserved,
                                   free=gpu.memory_total - gpu.memory_used - gpu.memory_reserved)
        assert version == real_pynvml.nvmlMemory_v2
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo_v2")
        return SimpleNamespace(version=version, total=gpu.memory_total, reserved=gpu.memory_reserved,
                               used=gpu.memory_used,
                               free=gpu.memory_total - gpu.memory_used - gpu.memory_reserved)

    def nvmlDeviceGetUtilizationRates(self, handle):
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=gpu.utilization_gpu, memory=gpu.utilization_memory)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == real_pynvml.NVML_TEMPERATURE_GPU
        return self._gpu(handle, "nvmlDeviceGetTemperature").temperature_c

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self._processes(self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses").compute_processes)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        return self._processes(self._gpu(handle, "nvmlDeviceGetGraphicsRunningProcesses").graphics_processes)

    def nvmlEventSetCreate(self):
        self._enter("nvmlEventSetCreate")
        self.open_event_sets += 1
        return object()

    def nvmlDeviceRegisterEvents(self, handle, event_types, event_set):
        self._gpu(handle, "nvmlDeviceRegisterEvents")
        assert event_types == real_pynvml.nvmlEventTypeXidCriticalError

    def nvmlEventSetWait(self, event_set, timeout_ms):
        self._enter("nvmlEventSetWait")
        assert isinstance(timeout_ms, int)
        if not self.xid_queue:
            raise real_pynvml.NVMLError_Timeout()
        index, xid = self.xid_queue.popleft()
        return SimpleNamespace(device=SimpleNamespace(index=index),
                               eventType=real_pynvml.nvmlEventTypeXidCriticalError,
                               eventData=xid, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)

    def nvmlEventSetFree(self, event_set):
        self._enter("nvmlEventSetFree")
        self.open_event_sets -= 1


# The exception classes, exactly the installed pynvml's.
for _name in dir(real_pynvml):
    if _name.startswith("NVMLError"):
        setattr(FakeNvml, _name, getattr(real_pynvml, _name))


class FakeClock:
    """A monotonic clock the test moves by hand; safe to read from another thread."""

    def __init__(self, now: float = 1000.0) -> None:
        self._now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def _poll_until(monitor: GpuMonitor, predicate: Callable[[dict], bool], timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        snapshot = monitor.snapshot()
        if predicate(snapshot):
            return snapshot
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no snapshot matched within {timeout} s; last: {snapshot}")
        monitor.wait_for_poll(snapshot["poll_count"] + 1, timeout=min(remaining, 0.5))


@pytest.fixture
def poll_until():
    """``poll_until(monitor, predicate, timeout=10)``: the first snapshot for which the predicate holds."""
    return _poll_until


@pytest.fixture
def fake_nvml() -> FakeNvml:
    return FakeNvml()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start_monitor():
    """Start a :class:`GpuMonitor` (fast polls, no Ollama pids by default); stopped at teardown."""
    monitors: list[GpuMonitor] = []

    def start(nvml: Any, **options: Any) -> GpuMonitor:
        options.setdefault("interval", 0.005)
        options.setdefault("ollama_pids", set)
        monitor = GpuMonitor(nvml=nvml, **options)
        monitors.append(monitor)
        monitor.start()
        return monitor

    yield start
    for monitor in monitors:
        assert monitor.stop(timeout=5), "the GPU monitor thread did not stop"


@pytest.fixture
def process_tree():
    """A real parent with one child, in a session of its own: (parent pid, child pid, pids()).

    ``pids()`` lists the live tree through psutil, the way the supervisor
    would for ``ollama serve`` and its runners. The whole group is killed at
    teardown, also when the test fails.
    """
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
              "print(child.pid, flush=True)\n"
              "child.wait()\n"  # reaps a killed child, as ollama serve does its runners
              "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        child_pid = int(parent.stdout.readline())

        def pids() -> set[int]:
            root = psutil.Process(parent.pid)
            return {parent.pid} | {proc.pid for proc in root.children(recursive=True)}

        yield parent.pid, child_pid, pids
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        parent.wait(timeout=10)
        parent.stdout.close()
