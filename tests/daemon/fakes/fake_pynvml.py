"""A stand-in for the ``pynvml`` module, scripted through a JSON file.

The daemon under test loads it with ``[gpu] nvml_module = "fake_pynvml"``
(this folder on PYTHONPATH), the one seam where NVML is swapped: there is
no GPU here. Every call re-reads ``$FAKE_NVML_SCRIPT``, so a test changes
the readings while the daemon runs:

    {"gpus": [{"name": "Fake H100", "memory_total": N, "memory_used": N,
               "processes": [{"pid": 123, "used_memory": N}]}]}

Exceptions and constants are the real ones from nvidia-ml-py.
"""

import json
import os
from types import SimpleNamespace

from pynvml import (NVML_TEMPERATURE_GPU, NVMLError, NVMLError_NotSupported,  # noqa: F401
                    nvmlEventTypeXidCriticalError, nvmlMemory_v2)


def _gpus() -> list[dict]:
    with open(os.environ["FAKE_NVML_SCRIPT"]) as script:
        return json.load(script)["gpus"]


def nvmlInit():
    _gpus()


def nvmlShutdown():
    pass


def nvmlSystemGetDriverVersion():
    return "550.00-fake"


def nvmlDeviceGetCount():
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index):
    return index


def nvmlDeviceGetName(handle):
    return _gpus()[handle]["name"]


def nvmlDeviceGetUUID(handle):
    return f"GPU-fake-{handle}"


def nvmlDeviceGetMemoryInfo(handle, version=None):
    gpu = _gpus()[handle]
    return SimpleNamespace(total=gpu["memory_total"], used=gpu["memory_used"],
                           free=gpu["memory_total"] - gpu["memory_used"], reserved=0)


def nvmlDeviceGetUtilizationRates(handle):
    return SimpleNamespace(gpu=50, memory=20)


def nvmlDeviceGetTemperature(handle, sensor):
    return 60


def nvmlDeviceGetPowerUsage(handle):
    return 150_000


def nvmlDeviceGetEnforcedPowerLimit(handle):
    return 700_000


def nvmlDeviceGetComputeRunningProcesses(handle):
    return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p["used_memory"])
            for p in _gpus()[handle].get("processes", [])]


def nvmlDeviceGetGraphicsRunningProcesses(handle):
    return []


def nvmlEventSetCreate():
    raise NVMLError_NotSupported()
