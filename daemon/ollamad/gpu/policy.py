"""Rules that turn GPU snapshots into "degraded" reasons and restart decisions.

Pure logic: no threads, no NVML, no HTTP. The supervisor loop feeds in a
:class:`~ollamad.gpu.monitor.GpuMonitor` snapshot and the ``models`` list of
Ollama's ``/api/ps`` (items with ``name``, ``size``, ``size_vram``), and acts
on what comes back:

* :func:`memory_pressure`: reasons to report the daemon degraded.
* :func:`cpu_fallback`: models Ollama silently put on the CPU although a GPU
  is present (seen after suspend/resume: ``size_vram == 0``).
* :func:`partial_offload`: models split between GPU and CPU.
* :class:`VramLeakPolicy`: when to restart Ollama because it holds VRAM its
  loaded models do not account for (runners that kept memory after unload).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

_GIB = 1024 ** 3


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / _GIB:.1f} GiB"


def models_vram_bytes(ps_models: Iterable[Mapping[str, Any]]) -> int:
    """The VRAM Ollama says its loaded models use: the sum of ``size_vram``."""
    return sum(int(model.get("size_vram") or 0) for model in ps_models)


def memory_pressure(snapshot: Mapping[str, Any], threshold_fraction: float) -> list[str]:
    """One reason per GPU whose memory in use is above ``threshold_fraction``."""
    if not 0 < threshold_fraction <= 1:
        raise ValueError(f"threshold_fraction must be in (0, 1], not {threshold_fraction!r}")
    reasons = []
    for gpu in snapshot.get("gpus", []):
        used, total = gpu.get("memory_used"), gpu.get("memory_total")
        if used is None or not total:
            continue
        if used / total > threshold_fraction:
            reasons.append(
                f"GPU {gpu['index']} memory {used / total:.0%} used ({_gib(used)} of {_gib(total)}),"
                f" above the {threshold_fraction:.0%} threshold")
    return reasons


def cpu_fallback(snapshot: Mapping[str, Any], ps_models: Iterable[Mapping[str, Any]]) -> list[str]:
    """One reason per loaded model that runs wholly on the CPU while a GPU is present.

    Only ``size_vram == 0`` counts: a model split between GPU and CPU
    (``0 < size_vram < size``) is Ollama's ordinary answer to a model that
    does not fit, not the silent fallback. A model pinned to the CPU on
    purpose (``num_gpu: 0``) looks the same and is reported too.
    """
    if not snapshot.get("available") or not snapshot.get("gpus"):
        return []
    return [
        f"model {model.get('name', '?')} is running on the CPU (size_vram 0) although a GPU is"
        " present: Ollama fell back to the CPU silently (seen after suspend/resume); restart Ollama"
        for model in ps_models
        if "size_vram" in model and model["size_vram"] == 0
    ]


def partial_offload(ps_models: Iterable[Mapping[str, Any]]) -> list[str]:
    """One reason per loaded model split between GPU and CPU (``0 < size_vram < size``).

    Ollama's answer to a model whose weights and KV cache (context × slots)
    do not fit: it runs, several times slower. No NVML is needed to see it.
    """
    reasons = []
    for model in ps_models:
        size, size_vram = int(model.get("size") or 0), int(model.get("size_vram") or 0)
        if 0 < size_vram < size:
            reasons.append(
                f"model {model.get('name', '?')} is only {size_vram / size:.0%} on the GPU "
                f"({_gib(size_vram)} of {_gib(size)}); the rest runs on the CPU, slower: lower "
                "ollama.context_length or the slots (ollama.num_parallel), or use a smaller model")
    return reasons


class VramLeakPolicy:
    """Decides when Ollama holds enough unexplained VRAM, for long enough, to restart it.

    The rule, checked on each :meth:`observe`:

    * **excess** = VRAM held by Ollama's processes (``ollama_vram_bytes`` of a
      snapshot) minus what its loaded models account for (the sum of
      ``size_vram`` in ``/api/ps``, see :func:`models_vram_bytes`).
    * The excess timer starts when the excess first rises above
      ``threshold_bytes`` and runs while it stays above. Any observation at or
      below the threshold (or with Ollama's VRAM unknown) resets it.
    * Once the timer has run ``duration_s`` seconds, the policy returns a
      restart reason, but only at an observation with no request in flight:
      while requests run, it waits (the timer keeps running) so a restart
      never cuts one off. Firing resets the timer.

    Runners carry some memory that ``size_vram`` leaves out (CUDA context,
    scratch buffers): pick a threshold well above that, e.g. 2 GiB. A
    ``threshold_bytes`` of ``None`` or ``0`` disables the policy: it never
    fires. This is the default in the daemon's config.
    """

    def __init__(self, threshold_bytes: int | None, duration_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threshold_bytes is not None and threshold_bytes < 0:
            raise ValueError(f"threshold_bytes must not be negative, not {threshold_bytes!r}")
        if duration_s < 0:
            raise ValueError(f"duration_s must not be negative, not {duration_s!r}")
        self.threshold_bytes = threshold_bytes
        self.duration_s = duration_s
        self._clock = clock
        self._excess_since: float | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.threshold_bytes)

    def observe(self, ollama_vram_bytes: int | None, loaded_models_vram_bytes: int,
                in_flight: int) -> str | None:
        """Feed one observation; a restart reason when the rule fires, else ``None``."""
        if not self.enabled or ollama_vram_bytes is None:
            self._excess_since = None
            return None
        excess = ollama_vram_bytes - loaded_models_vram_bytes
        if excess <= self.threshold_bytes:
            self._excess_since = None
            return None
        now = self._clock()
        if self._excess_since is None:
            self._excess_since = now
        held_for = now - self._excess_since
        if held_for < self.duration_s or in_flight > 0:
            return None
        self._excess_since = None
        return (f"Ollama holds {_gib(excess)} of GPU memory beyond its loaded models"
                f" ({_gib(ollama_vram_bytes)} held, {_gib(loaded_models_vram_bytes)} in /api/ps)"
                f" for {held_for:.0f} s, above the {_gib(self.threshold_bytes)} threshold:"
                " restarting Ollama to free it")
