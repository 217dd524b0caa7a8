"""The GPU watch with the real pynvml of this host, and the GPU benches' refusal without a GPU.

On a host without an NVIDIA driver, nvmlInit raises NVMLError_LibraryNotFound
(or DriverNotLoaded where the library is installed but the kernel module is
not): the monitor must say so and keep polling. On a GPU host the same test
checks that GPUs are listed instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ollamad.gpu import GpuMonitor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_snapshot():
    monitor = GpuMonitor(interval=0.01, ollama_pids=set)
    monitor.start()
    try:
        assert monitor.wait_for_poll(5, timeout=30)
        assert monitor.is_running()
        yield monitor.snapshot()
    finally:
        assert monitor.stop(timeout=5)


def test_real_pynvml_reports_no_gpu_plainly_and_keeps_running(real_snapshot):
    if real_snapshot["available"]:
        assert real_snapshot["gpus"] and real_snapshot["driver_version"]
        return
    assert real_snapshot["poll_count"] >= 5
    assert ("NVMLError_LibraryNotFound" in real_snapshot["reason"]
            or "NVMLError_DriverNotLoaded" in real_snapshot["reason"])
    assert real_snapshot["gpus"] == [] and real_snapshot["errors"] == []


@pytest.mark.parametrize("bench", ["gpu_compare.py", "gpu_attribution.py"])
def test_gpu_benches_exit_2_with_a_reason_without_a_gpu(bench, real_snapshot):
    if real_snapshot["available"]:
        pytest.skip("this host has a GPU: run the bench by hand")
    done = subprocess.run([sys.executable, str(REPO / "bench" / bench)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "cannot run here:" in done.stderr
