"""Request metrics: the old client's figures, plus latency percentiles and more.

``total_requests``, ``successful_requests``, ``failed_requests``,
``success_rate`` and ``average_response_time`` count model calls (generate,
chat, embed and each batch item) as the old in-process client did; ``ops``
counts every op, introspection included. Percentiles come from a window of
the most recent response times.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Mapping

from ollamad_client.protocol import Error

#: Ops whose results count as model requests in the old client's figures.
MODEL_OPS = frozenset({"generate", "chat", "embed", "batch_item"})
LATENCY_WINDOW = 4096


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
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

    def record(self, op: str, elapsed: float, *, result: Mapping[str, Any] | None = None,
               error: Error | None = None) -> None:
        with self._lock:
            counts = self._ops.setdefault(op, {"count": 0, "errors": 0})
            counts["count"] += 1
            if error is not None:
                counts["errors"] += 1
                self._errors[error.code.value] += 1
            if op not in MODEL_OPS:
                return
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

    def count_dropped(self) -> None:
        with self._lock:
            self.dropped_messages += 1

    def count_busy(self) -> None:
        with self._lock:
            self.rejected_busy += 1

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
                "uptime_s": round(time.time() - self._started, 3),
            }
        figures.update(gauges)
        return figures
