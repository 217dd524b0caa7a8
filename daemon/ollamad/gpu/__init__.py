"""The GPU watch: NVML readings, the monitor thread, and the policies on top.

* :mod:`ollamad.gpu.nvml_reader`: every NVML call, through one ``pynvml`` seam.
* :mod:`ollamad.gpu.monitor`: :class:`GpuMonitor`, the polling thread.
* :mod:`ollamad.gpu.policy`: memory pressure, CPU fallback, VRAM leak rules.
"""

from ollamad.gpu.monitor import GpuMonitor, attribute_processes
from ollamad.gpu.nvml_reader import GpuUnavailable, NvmlReader, describe_error
from ollamad.gpu.policy import (VramLeakPolicy, cpu_fallback, memory_pressure, models_vram_bytes,
                                partial_offload)

__all__ = [
    "GpuMonitor",
    "GpuUnavailable",
    "NvmlReader",
    "VramLeakPolicy",
    "attribute_processes",
    "cpu_fallback",
    "describe_error",
    "memory_pressure",
    "models_vram_bytes",
    "partial_offload",
]
