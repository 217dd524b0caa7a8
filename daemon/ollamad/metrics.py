"""Request metrics: the old client's figures, plus latency percentiles and more.

``total_requests``, ``successful_requests``, ``failed_requests``,
``success_rate`` and ``average_response_time`` count model calls (generate,
chat, embed and each batch item) as the old in-process client did; ``ops``
counts every op, introspection included. Percentiles come from a window of
the most recent response times.

The same model-request figures are also kept per lane and per tenant (user
and app), with each one's queue wait (p50/p95/p99 over its recent
requests): who uses the GPU, and who waits for it. At most
:data:`MAX_TENANTS` tenants are kept; the one seen least recently makes room.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Mapping

from ollamad.series import Series
from ollamad_client.protocol import Error

#: Ops whose results count as model requests in the old client's figures.
MODEL_OPS = frozenset({"generate", "chat", "embed", "batch_item"})
LATENCY_WINDOW = 4096
#: Queue waits kept per lane or tenant for its percentiles.
WAIT_WINDOW = 1024
#: Tenants whose figures are kept.
MAX_TENANTS = 256


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _quantiles(values: collections.deque[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    return {"p50": _percentile(ordered, 0.50), "p95": _percentile(ordered, 0.95),
            "p99": _percentile(ordered, 0.99), "window": len(ordered)}


class _Share:
    """One lane's or one tenant's model requests."""

    __slots__ = ("requests", "ok", "failed", "tokens", "errors", "waits", "seen")

    def __init__(self) -> None:
        self.requests = self.ok = self.failed = self.tokens = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.waits: collections.deque[float] = collections.deque(maxlen=WAIT_WINDOW)
        self.seen = 0.0

    def record(self, result: Mapping[str, Any] | None, error: Error | None) -> None:
        self.requests += 1
        if error is not None:
            self.failed += 1
            self.errors[error.code.value] += 1
        else:
            self.ok += 1
            self.tokens += int((result or {}).get("completion_tokens") or 0)

    def snapshot(self) -> dict[str, Any]:
        return {"requests": self.requests, "successful_requests": self.ok,
                "failed_requests": self.failed, "completion_tokens": self.tokens,
                "errors": dict(self.errors), "queue_wait": _quantiles(self.waits)}


#: The figures of a lane or tenant that has had no request yet.
EMPTY_SHARE = _Share().snapshot()


class _Shares:
    """:class:`_Share` by key, keeping at most ``limit`` keys (least recently seen go)."""

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._by_key: collections.OrderedDict[Any, _Share] = collections.OrderedDict()

    def __call__(self, key: Any) -> _Share:
        share = self._by_key.get(key)
        if share is None:
            share = self._by_key[key] = _Share()
            if self._limit is not None and len(self._by_key) > self._limit:
                self._by_key.popitem(last=False)
        else:
            self._by_key.move_to_end(key)
        share.seen = time.time()
        return share

    def items(self) -> list[tuple[Any, _Share]]:
        return list(self._by_key.items())


class Metrics:
    def __init__(self, max_tenant_labels: int = 20) -> None:
        self._lock = threading.Lock()
        #: The labelled counters and histograms the Prometheus exposition shows.
        self._series = Series(max_tenants=max_tenant_labels)
        self._started = time.time()
        self._total = self._ok = self._failed = 0
        self._time_sum = 0.0
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._eval_tokens = 0
        self._eval_ns = 0
        self._ops: dict[str, dict[str, int]] = {}
        self._errors: collections.Counter[str] = collections.Counter()
        self._attempts_retried = 0
        self.dropped_messages = 0     # malformed with no id, or unroutable replies
        self.rejected_busy = 0
        #: Connections the ZAP handler refused (an unknown CURVE key, no keys where needed).
        self.auth_refusals = 0
        #: Connections whose ZeroMQ handshake failed (no CURVE, or the wrong server key).
        self.handshake_failures = 0
        self._lanes = _Shares()
        self._tenants = _Shares(MAX_TENANTS)

    def record(self, op: str, elapsed: float, *, result: Mapping[str, Any] | None = None,
               error: Error | None = None, lane: str | None = None,
               tenant: Any = None, model: str | None = None) -> None:
        with self._lock:
            self._series.request(op, model, lane, tenant.label() if tenant is not None else None,
                                 "ok" if error is None else error.code.value, elapsed, result,
                                 op in MODEL_OPS)
            counts = self._ops.setdefault(op, {"count": 0, "errors": 0})
            counts["count"] += 1
            if error is not None:
                counts["errors"] += 1
                self._errors[error.code.value] += 1
            if op not in MODEL_OPS:
                return
            if lane is not None:
                self._lanes(lane).record(result, error)
            if tenant is not None:
                self._tenants(tenant).record(result, error)
            self._total += 1
            self._time_sum += elapsed
            self._latencies.append(elapsed)
            if error is not None:
                self._failed += 1
                return
            self._ok += 1
            if result is not None:
                self._eval_tokens += int(result.get("completion_tokens") or 0)
                self._eval_ns += int(result.get("eval_duration_ns") or 0)
                if int(result.get("attempts") or 1) > 1:
                    self._attempts_retried += 1

    def waited(self, lane: str | None, tenant: Any, seconds: float) -> None:
        """A task of this lane and tenant waited ``seconds`` in the queue before running."""
        with self._lock:
            if lane is not None:
                self._lanes(lane).waits.append(seconds)
                self._series.waited(lane, seconds)
            if tenant is not None:
                self._tenants(tenant).waits.append(seconds)

    def first_token(self, lane: str | None, seconds: float) -> None:
        """A generation's first token came ``seconds`` after the daemon received it."""
        with self._lock:
            self._series.first_token_after(lane or "", seconds)

    def series(self) -> dict[str, Any]:
        """The labelled counters and histograms (:meth:`ollamad.series.Series.snapshot`)."""
        with self._lock:
            return self._series.snapshot()

    def shares(self) -> tuple[dict[str, dict[str, Any]], list[tuple[Any, dict[str, Any]]]]:
        """The figures per lane, and per tenant (tenant, figures)."""
        with self._lock:
            return ({lane: share.snapshot() for lane, share in self._lanes.items()},
                    [(tenant, share.snapshot()) for tenant, share in self._tenants.items()])

    def count_dropped(self) -> None:
        with self._lock:
            self.dropped_messages += 1

    def count_busy(self) -> None:
        with self._lock:
            self.rejected_busy += 1

    def count_auth_refusal(self) -> None:
        with self._lock:   # called on the ZAP handler's thread
            self.auth_refusals += 1

    def count_handshake_failure(self) -> None:
        with self._lock:
            self.handshake_failures += 1

    def snapshot(self, **gauges: Any) -> dict[str, Any]:
        """All figures; ``gauges`` (queue depth, in flight, GPU...) are merged in."""
        with self._lock:
            ordered = sorted(self._latencies)
            figures = {
                "total_requests": self._total,
                "successful_requests": self._ok,
                "failed_requests": self._failed,
                "success_rate": round(self._ok / self._total, 6) if self._total else 0.0,
                "average_response_time": round(self._time_sum / self._total, 6)
                if self._total else 0.0,
                "latency": {"p50": _percentile(ordered, 0.50),
                            "p95": _percentile(ordered, 0.95),
                            "p99": _percentile(ordered, 0.99),
                            "window": len(ordered)},
                "tokens_per_second": round(self._eval_tokens / self._eval_ns * 1e9, 3)
                if self._eval_ns else 0.0,
                "completion_tokens": self._eval_tokens,
                "retried_requests": self._attempts_retried,
                "ops": {op: dict(c) for op, c in sorted(self._ops.items())},
                "errors": dict(self._errors),
                "dropped_messages": self.dropped_messages,
                "rejected_busy": self.rejected_busy,
                "auth_refusals": self.auth_refusals,
                "handshake_failures": self.handshake_failures,
                "uptime_s": round(time.time() - self._started, 3),
            }
        figures.update(gauges)
        return figures
