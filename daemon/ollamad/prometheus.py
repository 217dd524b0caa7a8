"""The Prometheus exposition: ``GET /metrics`` on a listener of its own, off by default.

The collector builds every family at scrape time from the snapshots the
``metrics`` and ``status`` ops read (the daemon's counters, the pool, the
supervisor, the GPU monitor), so the two views never disagree and a scrape
never waits on Ollama or NVML. Names follow Prometheus conventions (base
units in the name, ``_total`` for counters) and, where vLLM exports the same
figure, vLLM's name after the ``ollamad_`` prefix
(``ollamad_e2e_request_latency_seconds``, ``ollamad_time_to_first_token_seconds``,
``ollamad_num_requests_running`` ...).

The listener is a small threading HTTP server: each connection has a socket
time-out, it answers ``/metrics`` (and ``/`` with a pointer to it) and
nothing else, and :meth:`MetricsListener.stop` ends it within its time-out.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ollamad import __version__
from ollamad.supervisor.states import State

log = logging.getLogger("ollamad.prometheus")

#: Seconds a scrape connection may stay silent before it is dropped.
CONNECTION_TIMEOUT = 10.0

_REQUEST_LABELS = ["op", "model", "lane", "tenant", "code"]
_TOKEN_LABELS = ["model", "lane", "tenant"]


class Collector:
    """Families from ``metrics()`` (the ``metrics`` op's result), ``series()`` (its
    labelled counters), ``ollama()`` (the supervisor's snapshot) and ``gpu()`` (the GPU
    monitor's), called at each scrape, on the listener's thread."""

    def __init__(self, metrics: Callable[[], dict[str, Any]], series: Callable[[], dict[str, Any]],
                 ollama: Callable[[], dict[str, Any]], gpu: Callable[[], dict[str, Any]]):
        self._metrics, self._series, self._ollama, self._gpu = metrics, series, ollama, gpu

    def collect(self) -> Iterator[Metric]:
        series, metrics = self._series(), self._metrics()
        yield from _requests(series, metrics)
        yield from _lanes(metrics)
        yield from _ollama(self._ollama())
        yield from _gpus(self._gpu())
        info = GaugeMetricFamily("ollamad_info", "ollamad's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def _counter(name: str, doc: str, labels: list[str], values: dict[tuple, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _histograms(name: str, doc: str, by_lane: dict[str, dict[str, Any]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["lane"])
    for lane, h in sorted(by_lane.items()):
        family.add_metric([lane], [(bound, count) for bound, count in h["buckets"]],
                          sum_value=h["sum"])
    return family


def _requests(series: dict[str, Any], metrics: dict[str, Any]) -> Iterator[Metric]:
    yield _counter("ollamad_requests", "Requests answered, by op, model, lane, tenant and "
                   "result code (ok, or the error code)", _REQUEST_LABELS, series["requests"])
    yield _histograms("ollamad_e2e_request_latency_seconds", "Model requests: from receipt "
                      "to the final reply", series["latency"])
    yield _histograms("ollamad_request_queue_time_seconds", "Model requests: time waiting "
                      "for a worker", series["queue_wait"])
    yield _histograms("ollamad_time_to_first_token_seconds", "Generations: from receipt to "
                      "the answer's first piece", series["first_token"])
    for kind, doc in (("prompt", "Prompt tokens Ollama evaluated"),
                      ("generation", "Tokens Ollama generated")):
        yield _counter(f"ollamad_{kind}_tokens", doc, _TOKEN_LABELS,
                       {key[1:]: v for key, v in series["tokens"].items() if key[0] == kind})
    yield _counter("ollamad_request_retries", "Attempts beyond the first, by op and lane",
                   ["op", "lane"], series["retries"])
    yield _counter("ollamad_busy_rejections", "Requests refused busy (a queue or a byte "
                   "bound full)", [], {(): metrics.get("rejected_busy", 0)})
    yield _counter("ollamad_auth_refusals", "Connections the ZAP handler refused (a CURVE "
                   "key not in authorized_clients, a peer without keys where they are needed)",
                   [], {(): metrics.get("auth_refusals", 0)})
    yield _counter("ollamad_handshake_failures", "Connections whose ZeroMQ handshake failed "
                   "(a client without CURVE on a CURVE endpoint, a wrong server key)", [],
                   {(): metrics.get("handshake_failures", 0)})
    yield _counter("ollamad_dropped_messages", "Messages without a usable id, and replies "
                   "nobody could take", [], {(): metrics.get("dropped_messages", 0)})


def _lanes(metrics: dict[str, Any]) -> Iterator[Metric]:
    running = GaugeMetricFamily("ollamad_num_requests_running", "Items a worker runs now",
                                labels=["lane"])
    waiting = GaugeMetricFamily("ollamad_num_requests_waiting", "Items queued for a worker",
                                labels=["lane"])
    for lane, figures in sorted((metrics.get("lanes") or {}).items()):
        running.add_metric([lane], figures.get("in_flight", 0))
        waiting.add_metric([lane], figures.get("queued", 0))
    yield running
    yield waiting


def _ollama(ollama: dict[str, Any]) -> Iterator[Metric]:
    state = GaugeMetricFamily("ollamad_ollama_state", "1 for the state Ollama is in (as "
                              "supervisord names them), 0 for the others", labels=["state"])
    for each in State:
        state.add_metric([each.value], 1 if ollama.get("state") == each.value else 0)
    yield state
    yield _counter("ollamad_ollama_restarts", "Restarts of Ollama, by what caused them",
                   ["cause"], {(cause,): n for cause, n in
                               (ollama.get("restart_causes") or {}).items()})
    yield _counter("ollamad_ollama_hang_verdicts", "Times the probes found Ollama hung",
                   [], {(): ollama.get("hang_verdicts", 0)})
    loaded = GaugeMetricFamily("ollamad_model_loaded", "Models Ollama has loaded",
                               labels=["model"])
    vram = GaugeMetricFamily("ollamad_model_vram_bytes", "VRAM a loaded model uses",
                             labels=["model"])
    share = GaugeMetricFamily("ollamad_model_gpu_share_ratio", "Share of a loaded model in "
                              "VRAM (below 1: partly on the CPU)", labels=["model"])
    for model in ollama.get("models") or []:
        loaded.add_metric([model["name"]], 1)
        vram.add_metric([model["name"]], model.get("size_vram") or 0)
        if model.get("gpu_share") is not None:
            share.add_metric([model["name"]], model["gpu_share"])
    yield from (loaded, vram, share)


def _gpus(snapshot: dict[str, Any]) -> Iterator[Metric]:
    labels = ["gpu", "name"]
    families = {
        "memory_used": GaugeMetricFamily("ollamad_gpu_memory_used_bytes", "GPU memory in use",
                                         labels=labels),
        "memory_total": GaugeMetricFamily("ollamad_gpu_memory_total_bytes", "GPU memory",
                                          labels=labels),
        "utilization_gpu": GaugeMetricFamily("ollamad_gpu_utilization_ratio", "GPU busy "
                                             "fraction over NVML's last sample", labels=labels),
        "temperature_c": GaugeMetricFamily("ollamad_gpu_temperature_celsius",
                                           "GPU temperature", labels=labels),
        "power_draw_w": GaugeMetricFamily("ollamad_gpu_power_watts", "GPU power draw",
                                          labels=labels),
    }
    for gpu in snapshot.get("gpus") or []:
        key = [str(gpu.get("index")), str(gpu.get("name") or "")]
        for field, family in families.items():
            value = gpu.get(field)
            if value is not None:
                family.add_metric(key, value / 100 if field == "utilization_gpu" else value)
    yield from families.values()
    available = GaugeMetricFamily("ollamad_gpu_available", "1 when NVML answers")
    available.add_metric([], 1 if snapshot.get("available") else 0)
    yield available
    held = GaugeMetricFamily("ollamad_ollama_vram_bytes", "GPU memory held by Ollama's "
                             "process tree")
    if snapshot.get("ollama_vram_bytes") is not None:
        held.add_metric([], snapshot["ollama_vram_bytes"])
    yield held
    yield _counter("ollamad_gpu_xid_errors", "XID errors NVML reported", [],
                   {(): (snapshot.get("xid_errors") or {}).get("count", 0)})


class _Handler(http.server.BaseHTTPRequestHandler):
    registry: CollectorRegistry
    timeout = CONNECTION_TIMEOUT

    def do_GET(self) -> None:   # noqa: N802 (the http.server name)
        path = self.path.partition("?")[0]
        if path == "/metrics":
            try:
                body, status, kind = generate_latest(self.registry), 200, CONTENT_TYPE_LATEST
            except Exception:   # a bug in a collector: the scrape fails, the daemon does not
                log.exception("building /metrics failed")
                body, status, kind = b"collecting the metrics failed\n", 500, "text/plain"
        elif path == "/":
            body, status, kind = b"ollamad: metrics at /metrics\n", 200, "text/plain"
        else:
            body, status, kind = b"not found: try /metrics\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("scrape from %s: " + format, self.address_string(), *args)


class MetricsListener:
    """``GET /metrics`` on ``(host, port)``; port 0 takes a free one (see :attr:`address`)."""

    def __init__(self, host: str, port: int, collector: Collector):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        handler = type("Handler", (_Handler,), {"registry": registry})
        server_class = http.server.ThreadingHTTPServer
        if ":" in host:
            server_class = type("Server6", (server_class,), {"address_family": socket.AF_INET6})
        self._server = server_class((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="metrics-listener", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.ident is None or self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread.is_alive():
            # shutdown() waits for serve_forever without a limit: wait for it in a helper.
            stopper = threading.Thread(target=self._server.shutdown, name="metrics-stop",
                                       daemon=True)
            stopper.start()
            stopper.join(timeout)
            self._thread.join(timeout)
        self._server.server_close()
