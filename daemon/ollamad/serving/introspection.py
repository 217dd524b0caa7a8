"""What the daemon reports about itself: ``status``, ``health`` and ``metrics``.

Built on the I/O thread from snapshots the other parts keep (the
supervisor's, the GPU monitor's, the pool's counters), so answering never
waits on Ollama or NVML.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any, Callable

from ollamad import __version__
from ollamad.gpu import GpuMonitor, cpu_fallback, memory_pressure, partial_offload
from ollamad.metrics import EMPTY_SHARE, Metrics
from ollamad.scheduling import LANES, ProgressTracker, WorkerPool
from ollamad.serving.registry import OpenRequests
from ollamad.supervisor import Supervisor


def open_files() -> dict[str, int | None]:
    """This process's open descriptors and its soft limit."""
    try:
        count: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:
        count = None
    return {"open": count, "limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


#: Tenants ``status`` lists (the busiest); ``metrics`` lists all it keeps.
STATUS_TENANTS = 5


class Introspection:
    def __init__(self, *, config: Callable[[], Any], supervisor: Supervisor, pool: WorkerPool,
                 gpu_monitor: GpuMonitor, metrics: Metrics, progress: ProgressTracker,
                 requests: OpenRequests, bound: Callable[[], str], stopping: Callable[[], bool],
                 queued_bytes: Callable[[], int], backlog: Callable[[], int],
                 loads: Callable[[], list[dict[str, Any]]],
                 pulls: Callable[[], list[dict[str, Any]]]):
        self._config = config
        self._loads = loads
        self._pulls = pulls
        self._supervisor = supervisor
        self._pool = pool
        self._gpu = gpu_monitor
        self._metrics = metrics
        self._progress = progress
        self._requests = requests
        self._bound = bound
        self._stopping = stopping
        self._queued_bytes = queued_bytes
        self._backlog = backlog
        self._started = time.monotonic()

    def status(self) -> dict[str, Any]:
        config = self._config()
        return {
            "daemon": {"pid": os.getpid(), "version": __version__,
                       "uptime_s": round(time.monotonic() - self._started, 3),
                       "socket": self._bound(),
                       "state": "stopping" if self._stopping() else "serving",
                       "workers": self._pool.size, "busy_workers": self._pool.busy(),
                       "queue_depth": self._pool.depth(), "queue_capacity": config.queue_size,
                       "queued_bytes": self._queued_bytes(),
                       "queued_bytes_limit": config.max_queued_bytes,
                       "replies_waiting_for_slow_clients": self._backlog(),
                       "connections": {"open": self._requests.connections,
                                       "max": self._requests.max_connections,
                                       "refused": self._requests.refused_connections},
                       "files": open_files(),
                       "model": config.model},
            "scheduling": self._scheduling(config),
            "ollama": {**self._supervisor.snapshot(), "loads_in_progress": self._loads(),
                       "pulls_in_progress": self._pulls()},
            "gpu": self._gpu.summary(),
            "health": self.health(),
        }

    def health(self) -> dict[str, Any]:
        config = self._config()
        ollama = self._supervisor.snapshot()
        unhealthy, degraded = [], []
        if self._stopping():
            unhealthy.append("ollamad is shutting down")
        starting_for = ollama.get("uptime_s")
        starting = (ollama.get("state") == "STARTING" and starting_for is not None
                    and starting_for <= config.ollama.startup_timeout)
        if starting:
            unhealthy.append(f"Ollama is STARTING ({starting_for:.0f} s of "
                             f"ollama.startup_timeout {config.ollama.startup_timeout:g} s)")
        elif ollama.get("state") != "RUNNING":
            why = ollama.get("fatal_reason") or ollama.get("last_reason")
            unhealthy.append(f"Ollama is {ollama.get('state')}" + (f": {why}" if why else ""))
        gpu = self._gpu.snapshot()
        degraded += memory_pressure(gpu, config.gpu.memory_pressure)
        degraded += cpu_fallback(gpu, ollama.get("models") or [])
        degraded += partial_offload(ollama.get("models") or [])
        probe_error = (ollama.get("last_probe") or {}).get("inference_error")
        if probe_error and ollama.get("state") == "RUNNING":
            degraded.append(f"the inference probe of {config.model} gets an error answer "
                            f"({probe_error}): hang detection is blind until it succeeds")
        connections = self._requests.connections
        if connections >= 0.9 * self._requests.max_connections:
            degraded.append(f"{connections} client connections open, of at most "
                            f"{self._requests.max_connections}")
        status = "unhealthy" if unhealthy else "degraded" if degraded else "healthy"
        return {"healthy": status == "healthy", "status": status, "reasons": unhealthy + degraded,
                "ollama": {"state": ollama.get("state"), "pid": ollama.get("pid"),
                           "url": ollama.get("url"), "restarts": ollama.get("restarts"),
                           # Unhealthy only because Ollama is starting, within its limit:
                           # monitoring treats that as a warning (`ollamad health` exits 1).
                           "starting": starting and len(unhealthy) == 1},
                "gpu": self._gpu.summary()}

    def _shares(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Lanes and tenants: their figures so far, and what they have queued and in flight now."""
        lanes_now, tenants_now = self._pool.counts()
        lane_figures, tenant_figures = self._metrics.shares()
        idle = {"queued": 0, "in_flight": 0}
        lanes = {lane: {**idle, **lanes_now.get(lane, {}), **lane_figures.get(lane, EMPTY_SHARE)}
                 for lane in LANES}
        by_tenant = dict(tenant_figures)
        tenants = [{"tenant": tenant.label(), "uid": tenant.uid, "key": tenant.key,
                    "user": tenant.user, "app": tenant.app, **idle, **tenants_now.get(tenant, {}),
                    **by_tenant.get(tenant, EMPTY_SHARE)}
                   for tenant in {*by_tenant, *tenants_now}]
        tenants.sort(key=lambda t: (t["in_flight"] + t["queued"], t["requests"]), reverse=True)
        return lanes, tenants

    def _scheduling(self, config: Any) -> dict[str, Any]:
        lanes, tenants = self._shares()
        s = config.scheduling
        return {"lanes_enabled": s.lanes, "fair": s.fair, "batch_min_share": s.batch_min_share,
                "lanes": lanes, "tenants": tenants[:STATUS_TENANTS], "tenants_known": len(tenants),
                "profiles": sorted(config.profiles)}

    def metrics(self) -> dict[str, Any]:
        in_flight, _ = self._progress()
        lanes, tenants = self._shares()
        return self._metrics.snapshot(queue_depth=self._pool.depth(), in_flight=self._pool.busy(),
                                      lanes=lanes, tenants=tenants,
                                      generations_in_flight=in_flight,
                                      ollama_restarts=self._supervisor.snapshot().get("restarts", 0),
                                      gpu=self._gpu.metrics())

    def gpu(self) -> dict[str, Any]:
        return self._gpu.snapshot()
