"""The GPU watch: one thread polls NVML and keeps the latest snapshot.

:class:`GpuMonitor` owns an :class:`~ollamad.gpu.nvml_reader.NvmlReader`. Its
thread reads every GPU each ``interval`` seconds, marks which processes on
the GPUs belong to Ollama (the pids ``ollama_pids()`` names: ``ollama serve``
and its runners), drains critical XID events, and publishes a plain,
JSON-able snapshot. Readers (:meth:`~GpuMonitor.snapshot`,
:meth:`~GpuMonitor.summary`, :meth:`~GpuMonitor.metrics`) take a copy under
a lock held only for that copy, so they never wait on NVML, which can stall
for seconds when a GPU drops off the bus.

Trouble is reported, never fatal:

* No GPU (no driver, no library, no device): ``available`` is false,
  ``reason`` says why, one log line says so, and NVML is tried again only
  every ``init_retry_s`` seconds, so a GPU-less host pays next to nothing.
* A figure NVML does not support stays ``None`` with a note in that GPU's
  ``errors``; a lost GPU is reported for that GPU alone.
* After ``reinit_after_failures`` failed polls in a row (NVML could not
  count the GPUs, or a GPU was lost), NVML is shut down and started again.
* Each distinct trouble is logged once, until a clean poll clears it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any, Callable, Iterable

from ollamad.gpu.nvml_reader import (DEVICE_ERROR, GpuUnavailable, NvmlReader, describe_error,
                                     processes_known)

DEFAULT_LOGGER = logging.getLogger("ollamad.gpu")


def attribute_processes(gpus: list[dict], ollama_pids: set[int] | None) -> tuple[int | None, int | None]:
    """Mark each GPU process as Ollama's or not; total the memory of each side.

    Sets ``ollama`` on every process and ``ollama_memory``/``other_memory``
    on every GPU, and returns the totals over all GPUs. A figure is ``None``
    where it cannot be known: Ollama's pids unknown, a GPU's process list
    unreadable, and, for the totals, any GPU whose figure is ``None``. A
    process whose own usage NVML cannot tell counts as 0 bytes.
    """
    totals: list[int | None] = [0, 0]
    for gpu in gpus:
        known = ollama_pids is not None and processes_known(gpu)
        ollama = other = 0
        for proc in gpu["processes"]:
            proc["ollama"] = None if ollama_pids is None else proc["pid"] in ollama_pids
            if proc["ollama"]:
                ollama += proc["used_memory"] or 0
            else:
                other += proc["used_memory"] or 0
        gpu["ollama_memory"] = ollama if known else None
        gpu["other_memory"] = other if known else None
        for side, figure in enumerate((gpu["ollama_memory"], gpu["other_memory"])):
            totals[side] = None if figure is None or totals[side] is None else totals[side] + figure
    if not gpus:
        return None, None
    return totals[0], totals[1]


def _sum_known(values: Iterable[int | float | None]) -> int | float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _max_known(values: Iterable[int | float | None]) -> int | float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


class _LogOnce:
    """Logs each distinct message once, until :meth:`clear`.

    A host without a GPU, or a GPU that is lost, fails the same way on every
    poll; the log should say so once, not every few seconds.
    """

    _MAX_REMEMBERED = 64  # bounds memory if messages keep changing

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[str] = set()

    def warning(self, message: str, exc_info: bool = False) -> None:
        if message in self._seen:
            return
        if len(self._seen) >= self._MAX_REMEMBERED:
            self._seen.clear()
        self._seen.add(message)
        self._logger.warning("%s", message, exc_info=exc_info)

    def clear(self) -> bool:
        """Forget what was logged; true if anything had been."""
        had_trouble = bool(self._seen)
        self._seen.clear()
        return had_trouble


class GpuMonitor:
    """Polls NVML on a daemon thread; :meth:`snapshot` returns the latest reading.

    ``ollama_pids`` is called from the monitor thread on every poll and must
    be thread-safe; it should name every process of Ollama's tree (runners
    orphaned by a killed ``ollama serve`` included, e.g. by session id), as
    NVML reports host pids. ``nvml`` is the ``pynvml`` module or a stand-in
    (default: import ``pynvml``). ``clock`` (monotonic seconds) paces the
    retries of a failed NVML start.
    """

    def __init__(self, interval: float, ollama_pids: Callable[[], Iterable[int]],
                 nvml: Any = None, reinit_after_failures: int = 3,
                 clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = DEFAULT_LOGGER,
                 init_retry_s: float = 60.0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        if reinit_after_failures < 1:
            raise ValueError(f"reinit_after_failures must be at least 1, not {reinit_after_failures!r}")
        self._interval = interval
        self._ollama_pids = ollama_pids
        self._reinit_after_failures = reinit_after_failures
        self._clock = clock
        self._logger = logger
        self._init_retry_s = init_retry_s
        self._reader = NvmlReader(nvml)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._published = threading.Condition(self._lock)
        # Owned by the monitor thread.
        self._open = False
        self._announced = False
        self._reason: str | None = "the GPU watch has not polled yet"
        self._next_open_at = float("-inf")
        self._failed_polls = 0
        self._reinit_count = 0
        self._poll_count = 0
        self._xid_count = 0
        self._xid_last: dict[str, Any] | None = None
        self._unavailable_log = _LogOnce(logger)
        self._trouble_log = _LogOnce(logger)
        self._snapshot = self._unavailable_snapshot()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("GpuMonitor already started")
        self._thread = threading.Thread(target=self._run, name="ollamad-gpu-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to stop and wait up to ``timeout`` s; true once it has."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def started(self) -> bool:
        """start() was called and stop() was not."""
        return self._thread is not None and not self._stop.is_set()

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        """A reload's new ``gpu.poll_interval``: it applies from the next poll."""
        self._interval = seconds

    # -- readers (any thread) ---------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A copy of the latest snapshot; never waits on NVML."""
        with self._lock:
            return copy.deepcopy(self._snapshot)

    def wait_for_poll(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` polls have been published; false on time-out."""
        with self._published:
            return self._published.wait_for(lambda: self._poll_count >= count, timeout)

    def summary(self) -> dict[str, Any]:
        """The few figures the ``status`` and ``health`` ops show."""
        snap = self.snapshot()
        return {
            "available": snap["available"],
            "reason": snap["reason"],
            "gpus": [{key: gpu[key] for key in ("index", "name", "memory_used", "memory_total")}
                     for gpu in snap["gpus"]],
            "ollama_vram_bytes": snap["ollama_vram_bytes"],
            "xid_error_count": snap["xid_errors"]["count"],
            "updated_at": snap["updated_at"],
        }

    def metrics(self) -> dict[str, int | float | None]:
        """Flat figures for the ``metrics`` op; ``None`` where no GPU reports one."""
        snap = self.snapshot()
        gpus = snap["gpus"]
        return {
            "gpu_available": int(snap["available"]),
            "gpu_count": len(gpus),
            "gpu_memory_used_bytes": _sum_known(g["memory_used"] for g in gpus),
            "gpu_memory_total_bytes": _sum_known(g["memory_total"] for g in gpus),
            "ollama_vram_bytes": snap["ollama_vram_bytes"],
            "other_vram_bytes": snap["other_vram_bytes"],
            "gpu_utilization_max": _max_known(g["utilization_gpu"] for g in gpus),
            "gpu_temperature_max_c": _max_known(g["temperature_c"] for g in gpus),
            "gpu_power_draw_w": _sum_known(g["power_draw_w"] for g in gpus),
            "xid_error_count": snap["xid_errors"]["count"],
            "gpu_poll_count": snap["poll_count"],
            "gpu_reinit_count": snap["reinit_count"],
        }

    # -- the monitor thread -----------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    snapshot = self._poll()
                except Exception as exc:  # a bug here must not end the watch
                    message = f"GPU watch: poll failed: {describe_error(exc)}"
                    self._trouble_log.warning(message, exc_info=True)
                    snapshot = dict(self._snapshot, updated_at=time.time(), errors=[message])
                self._publish(snapshot)
                if self._stop.wait(self._interval):
                    break
        finally:
            self._reader.close()

    def _publish(self, snapshot: dict[str, Any]) -> None:
        with self._published:
            self._poll_count += 1
            snapshot["poll_count"] = self._poll_count
            self._snapshot = snapshot
            self._published.notify_all()

    def _poll(self) -> dict[str, Any]:
        if not self._open and self._clock() >= self._next_open_at:
            self._try_open()
        if not self._open:
            return self._unavailable_snapshot()
        read_errors: list[str] = []
        try:
            gpus = self._reader.read_gpus()
        except Exception as exc:
            gpus = []
            read_errors.append(f"reading GPUs: {describe_error(exc)}")
        read_errors += [f"GPU {gpu['index']}: {gpu['errors'][DEVICE_ERROR]}"
                        for gpu in gpus if DEVICE_ERROR in gpu["errors"]]
        other_errors: list[str] = []
        ollama_vram, other_vram = attribute_processes(gpus, self._read_ollama_pids(other_errors))
        self._take_xid_events(other_errors)
        snapshot = self._build_snapshot(True, None, gpus, ollama_vram, other_vram,
                                        read_errors + other_errors)
        self._account(read_errors, other_errors)
        return snapshot

    def _try_open(self) -> None:
        try:
            self._reader.open()
        except GpuUnavailable as exc:
            self._open = False
            self._announced = False
            self._reason = str(exc)
            self._next_open_at = self._clock() + self._init_retry_s
            self._unavailable_log.warning(
                f"GPU watch off: {self._reason} (trying again every {self._init_retry_s:g} s)")
            return
        self._open = True
        self._reason = None
        self._unavailable_log.clear()
        if not self._announced:  # not again on every re-initialisation
            self._announced = True
            xid = self._reader.xid_support
            self._logger.info("GPU watch on: NVIDIA driver %s; critical XID events %s",
                              self._reader.driver_version,
                              "watched" if xid["supported"] else f"not watched ({xid['reason']})")

    def _account(self, read_errors: list[str], other_errors: list[str]) -> None:
        """Log trouble once, and re-initialise NVML after too many failed polls."""
        if not read_errors and not other_errors:
            if self._trouble_log.clear():
                self._logger.info("GPU watch: polls are clean again")
        for error in read_errors + other_errors:
            self._trouble_log.warning(f"GPU watch: {error}")
        if not read_errors:
            self._failed_polls = 0
            return
        self._failed_polls += 1
        if self._failed_polls >= self._reinit_after_failures:
            self._trouble_log.warning(
                f"GPU watch: {self._failed_polls} polls failed in a row; re-initialising NVML")
            self._failed_polls = 0
            self._reinit_count += 1
            self._reader.close()
            self._open = False
            self._try_open()

    def _read_ollama_pids(self, errors: list[str]) -> set[int] | None:
        try:
            return set(self._ollama_pids())
        except Exception as exc:
            errors.append(f"listing Ollama's processes: {describe_error(exc)}")
            return None

    def _take_xid_events(self, errors: list[str]) -> None:
        try:
            events = self._reader.read_xid_events()
        except Exception as exc:
            errors.append(f"reading XID events: {describe_error(exc)}")
            return
        for event in events:
            self._xid_count += 1
            self._xid_last = event
            self._logger.error("GPU watch: GPU %s reported critical XID %d (%s)",
                               event["gpu_index"], event["xid"],
                               event["meaning"] or "see NVIDIA's XID catalogue")

    # -- snapshot shape ----------------------------------------------------

    def _unavailable_snapshot(self) -> dict[str, Any]:
        return self._build_snapshot(False, self._reason, [], None, None, [])

    def _build_snapshot(self, available: bool, reason: str | None, gpus: list[dict],
                        ollama_vram: int | None, other_vram: int | None,
                        errors: list[str]) -> dict[str, Any]:
        return {
            "available": available,
            "reason": reason,
            "driver_version": self._reader.driver_version if available else None,
            "updated_at": time.time(),
            "poll_count": self._poll_count,
            "gpus": gpus,
            "ollama_vram_bytes": ollama_vram,
            "other_vram_bytes": other_vram,
            "xid_errors": {
                "supported": self._reader.xid_support["supported"],
                "reason": self._reader.xid_support["reason"],
                "count": self._xid_count,
                "last": self._xid_last,
            },
            "reinit_count": self._reinit_count,
            "errors": errors,
        }
