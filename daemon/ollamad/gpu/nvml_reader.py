"""Read the GPUs through NVML: one call per figure, one plain dict per GPU.

This is the only place in ollamad that talks to NVML, and it does so through
one object: the ``pynvml`` module (from the ``nvidia-ml-py`` distribution)
handed to :class:`NvmlReader`, or imported on first use. Tests hand in a
scripted stand-in with the same functions and exception classes.

Failures are sorted by how much they take down with them:

* NVML cannot start (no library, no driver, version mismatch): the whole
  watch is off; :meth:`NvmlReader.open` raises :class:`GpuUnavailable` with a
  plain-words reason.
* One figure is not supported (temperature on some boards, power on others):
  that figure is ``None`` and ``errors[<field>]`` says why; the rest of the
  GPU is still read.
* The device is gone (``GpuIsLost`` and friends): the remaining reads of that
  GPU would fail too, so its entry stops there with ``errors["device"]``; the
  other GPUs are still read. The monitor counts such polls as failed.

Names come back as ``str`` from current nvidia-ml-py and as ``bytes`` from
old releases; both are accepted.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Callable

#: Key in a GPU's ``errors`` meaning the device itself could not be read.
DEVICE_ERROR = "device"

# Error classes meaning the device or driver is gone rather than one query
# being unsupported: every further read of that device would fail as well.
_DEVICE_GONE_ERRORS = (
    "NVMLError_GpuIsLost",
    "NVMLError_ResetRequired",
    "NVMLError_Uninitialized",
    "NVMLError_DriverNotLoaded",
    "NVMLError_Unknown",
)

# Why NVML would not start, in words an operator can act on.
_INIT_FAILURE_HINTS = {
    "NVMLError_LibraryNotFound": "NVML library not found ({cls}): no NVIDIA driver on this host",
    "NVMLError_DriverNotLoaded": "NVIDIA driver not loaded ({cls}): the kernel module is not running",
    "NVMLError_NoPermission": "no permission to use NVML ({cls}): check access to /dev/nvidia*",
    "NVMLError_LibRmVersionMismatch": (
        "NVML library and kernel driver versions differ ({cls}): "
        "reboot or reload the nvidia module after a driver upgrade"
    ),
}

# What the critical XIDs seen most on inference hosts mean (NVIDIA's XID
# catalogue); anything else is shown by number only.
_XID_MEANINGS = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup after a fault",
    48: "double-bit ECC error",
    63: "ECC page retirement or row remapping",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
}

# A bound on events taken per poll, so a flood cannot stall the poll loop.
_MAX_XID_EVENTS_PER_READ = 64
# nvmlEventSetWait's time-out when draining events inside a poll: short, and
# not 0, whose meaning the NVML reference leaves unstated.
_XID_WAIT_MS = 1


class GpuUnavailable(Exception):
    """NVML cannot be used here; ``str(exc)`` says why in plain words."""


def describe_error(exc: BaseException) -> str:
    """``"GPU is lost (NVMLError_GpuIsLost)"``: the message plus the class name."""
    try:
        message = str(exc)
    except Exception:  # pynvml's __str__ calls into NVML for unknown codes
        message = repr(exc)
    return f"{message} ({type(exc).__name__})" if message else type(exc).__name__


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _max_known(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _note_error(gpu: dict[str, Any], field: str, exc: BaseException) -> bool:
    """Record ``exc`` in the GPU's ``errors``; true when the device itself is gone."""
    if type(exc).__name__ in _DEVICE_GONE_ERRORS:
        gpu["errors"][DEVICE_ERROR] = f"{field}: {describe_error(exc)}"
        return True
    gpu["errors"][field] = describe_error(exc)
    return False


def processes_known(gpu: dict[str, Any]) -> bool:
    """Whether the GPU's process list was read (an empty list may mean "unreadable")."""
    return not {DEVICE_ERROR, "handle", "processes"} & gpu["errors"].keys()


class NvmlReader:
    """Opens NVML, reads every GPU on demand, and drains critical XID events.

    Not thread-safe: one thread (the monitor's) opens, reads and closes it.
    """

    def __init__(self, nvml: Any = None) -> None:
        """``nvml``: the ``pynvml`` module, a stand-in for it, or the name of
        a module to import on first use (default ``"pynvml"``)."""
        self._module_name = nvml if isinstance(nvml, str) else "pynvml"
        self._nvml = None if isinstance(nvml, str) else nvml
        self._opened = False
        self._event_set: Any = None
        self._index_by_uuid: dict[str, int] = {}
        self._memory_v2 = True
        self.driver_version: str | None = None
        #: Whether critical XID events can be received, and if not, why.
        self.xid_support: dict[str, Any] = {"supported": False, "reason": "NVML is not open"}

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        """Initialise NVML; raise :class:`GpuUnavailable` when there is no usable GPU."""
        nvml = self._module()
        try:
            nvml.nvmlInit()
        except Exception as exc:
            template = _INIT_FAILURE_HINTS.get(type(exc).__name__)
            if template is None:
                raise GpuUnavailable(f"NVML failed to initialise: {describe_error(exc)}") from exc
            raise GpuUnavailable(template.format(cls=type(exc).__name__)) from exc
        self._opened = True
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            self.close()
            raise GpuUnavailable(f"NVML cannot count the GPUs: {describe_error(exc)}") from exc
        if count == 0:
            self.close()
            raise GpuUnavailable("NVML is running but found no NVIDIA GPU")
        try:
            self.driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        except Exception:
            self.driver_version = None  # cosmetic; never a reason to stop
        self._memory_v2 = hasattr(nvml, "nvmlMemory_v2")
        self._register_xid_events(count)

    def close(self) -> None:
        """Free the event set and shut NVML down; errors here change nothing."""
        self._close_event_set()
        if self._opened:
            self._opened = False
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self.xid_support = {"supported": False, "reason": "NVML is not open"}

    def _close_event_set(self) -> None:
        if self._event_set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._event_set)
            except Exception:
                pass
            self._event_set = None
        self._index_by_uuid.clear()

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module(self._module_name)
            except Exception as exc:
                raise GpuUnavailable(
                    f"the {self._module_name} module (package nvidia-ml-py) cannot be imported: "
                    + describe_error(exc)) from exc
        return self._nvml

    # -- GPUs --------------------------------------------------------------

    def read_gpus(self) -> list[dict[str, Any]]:
        """One dict per GPU; raises only when NVML cannot even count them."""
        return [self._read_gpu(index) for index in range(self._nvml.nvmlDeviceGetCount())]

    def _read_gpu(self, index: int) -> dict[str, Any]:
        gpu: dict[str, Any] = {
            "index": index, "name": None, "uuid": None,
            "memory_total": None, "memory_used": None, "memory_free": None,
            "memory_reserved": None,
            "utilization_gpu": None, "utilization_memory": None,
            "temperature_c": None, "power_draw_w": None, "power_limit_w": None,
            "processes": [], "errors": {},
        }
        try:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            # NoPermission here (a device cgroup hides this GPU) is noted like
            # any field; only the device-gone errors count as a lost GPU.
            _note_error(gpu, "handle", exc)
            return gpu
        for field, read in self._field_readers():
            try:
                read(handle, gpu)
            except Exception as exc:
                if _note_error(gpu, field, exc):
                    break
        return gpu

    def _field_readers(self) -> tuple[tuple[str, Callable[[Any, dict], None]], ...]:
        return (
            ("name", self._read_name),
            ("uuid", self._read_uuid),
            ("memory", self._read_memory),
            ("utilization", self._read_utilization),
            ("temperature_c", self._read_temperature),
            ("power_draw_w", self._read_power_draw),
            ("power_limit_w", self._read_power_limit),
            ("processes", self._read_compute_processes),
            ("graphics_processes", self._read_graphics_processes),
        )

    def _read_name(self, handle: Any, gpu: dict) -> None:
        gpu["name"] = _text(self._nvml.nvmlDeviceGetName(handle))

    def _read_uuid(self, handle: Any, gpu: dict) -> None:
        gpu["uuid"] = _text(self._nvml.nvmlDeviceGetUUID(handle))

    def _read_memory(self, handle: Any, gpu: dict) -> None:
        # The v2 struct keeps driver-reserved memory out of "used", as
        # nvidia-smi does; v1 folds it in. Drivers before R510 only know v1.
        info = None
        if self._memory_v2:
            try:
                info = self._nvml.nvmlDeviceGetMemoryInfo(handle, version=self._nvml.nvmlMemory_v2)
            except Exception as exc:
                if type(exc).__name__ in _DEVICE_GONE_ERRORS:
                    raise
                self._memory_v2 = False
        if info is None:
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        gpu["memory_total"] = int(info.total)
        gpu["memory_used"] = int(info.used)
        gpu["memory_free"] = int(info.free)
        reserved = getattr(info, "reserved", None)
        gpu["memory_reserved"] = None if reserved is None else int(reserved)

    def _read_utilization(self, handle: Any, gpu: dict) -> None:
        rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
        gpu["utilization_gpu"] = int(rates.gpu)
        gpu["utilization_memory"] = int(rates.memory)

    def _read_temperature(self, handle: Any, gpu: dict) -> None:
        gpu["temperature_c"] = int(
            self._nvml.nvmlDeviceGetTemperature(handle, self._nvml.NVML_TEMPERATURE_GPU))

    def _read_power_draw(self, handle: Any, gpu: dict) -> None:
        gpu["power_draw_w"] = self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # mW

    def _read_power_limit(self, handle: Any, gpu: dict) -> None:
        gpu["power_limit_w"] = self._nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0  # mW

    def _read_compute_processes(self, handle: Any, gpu: dict) -> None:
        self._merge_processes(gpu, self._nvml.nvmlDeviceGetComputeRunningProcesses(handle))

    def _read_graphics_processes(self, handle: Any, gpu: dict) -> None:
        self._merge_processes(gpu, self._nvml.nvmlDeviceGetGraphicsRunningProcesses(handle))

    @staticmethod
    def _merge_processes(gpu: dict, nvml_processes: list[Any]) -> None:
        # A process can be listed as compute and graphics at once; its memory
        # is the same allocation, so keep the larger figure, never the sum.
        # usedGpuMemory is None where the driver cannot tell (WDDM, some
        # containers).
        by_pid = {p["pid"]: p for p in gpu["processes"]}
        for proc in nvml_processes:
            pid = int(proc.pid)
            used = None if proc.usedGpuMemory is None else int(proc.usedGpuMemory)
            if pid in by_pid:
                by_pid[pid]["used_memory"] = _max_known(by_pid[pid]["used_memory"], used)
            else:
                by_pid[pid] = {"pid": pid, "used_memory": used}
                gpu["processes"].append(by_pid[pid])

    # -- critical XID events -----------------------------------------------

    def _register_xid_events(self, count: int) -> None:
        nvml = self._nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except Exception as exc:
            self.xid_support = {"supported": False,
                                "reason": f"cannot create an NVML event set: {describe_error(exc)}"}
            return
        refused: list[str] = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError,
                                              self._event_set)
            except Exception as exc:
                refused.append(f"GPU {index}: {describe_error(exc)}")
                continue
            try:
                self._index_by_uuid[_text(nvml.nvmlDeviceGetUUID(handle))] = index
            except Exception:
                pass  # its events will show gpu_index None
        if len(refused) == count:
            self._close_event_set()
            self.xid_support = {"supported": False,
                                "reason": "XID events not supported: " + "; ".join(refused)}
        else:
            self.xid_support = {"supported": True,
                                "reason": "; ".join(refused) or None}

    def read_xid_events(self) -> list[dict[str, Any]]:
        """Critical XID events queued since the last call, waiting at most a millisecond.

        Raises the NVML error when waiting on the event set fails for a
        reason other than "nothing queued".
        """
        if self._event_set is None:
            return []
        nvml = self._nvml
        events = []
        for _ in range(_MAX_XID_EVENTS_PER_READ):
            try:
                data = nvml.nvmlEventSetWait(self._event_set, _XID_WAIT_MS)
            except nvml.NVMLError_Timeout:
                break
            xid = int(data.eventData)
            events.append({
                "gpu_index": self._index_of(data.device),
                "xid": xid,
                "meaning": _XID_MEANINGS.get(xid),
                "time": time.time(),
            })
        return events

    def _index_of(self, handle: Any) -> int | None:
        # Event data carries a device handle; handles do not compare by
        # value, UUIDs do.
        try:
            return self._index_by_uuid.get(_text(self._nvml.nvmlDeviceGetUUID(handle)))
        except Exception:
            return None
