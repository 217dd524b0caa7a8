"""Counters and histograms by label, for the Prometheus exposition.

Label values come from clients (model names, app names), so each labelled
dimension keeps its first ``limit`` values and folds the rest into
``other``: a value once given its own series keeps it, so every counter
stays monotonic, and a client inventing names cannot grow the exposition.
Histogram buckets are vLLM's for the same figures, so dashboards made for
vLLM read these too.
"""

from __future__ import annotations

import bisect
from typing import Any, Iterable, Mapping

#: vLLM's ``e2e_request_latency_seconds`` buckets (seconds).
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                   50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
#: vLLM's ``time_to_first_token_seconds`` buckets, also used for the queue wait.
FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                       2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
OTHER = "other"


class Histogram:
    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets: Iterable[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)   # the last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, observations at or below it)``, ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*map(repr, self.buckets), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


class BoundedLabel:
    """The first ``limit`` distinct values keep their name; later ones are :data:`OTHER`."""

    def __init__(self, limit: int):
        self.limit = limit
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._kept:
            return value
        if len(self._kept) < self.limit:
            self._kept.add(value)
            return value
        return OTHER


class Series:
    """Every labelled figure; not thread-safe (:class:`~ollamad.metrics.Metrics` locks)."""

    def __init__(self, max_tenants: int = 20, max_models: int = 50):
        self.tenant = BoundedLabel(max_tenants)
        self.model = BoundedLabel(max_models)
        #: (op, model, lane, tenant, code) -> requests; code is "ok" or the error code.
        self.requests: dict[tuple[str, str, str, str, str], int] = {}
        #: (kind, model, lane, tenant) -> tokens; kind is "prompt" or "generation".
        self.tokens: dict[tuple[str, str, str, str], int] = {}
        #: (op, lane) -> attempts beyond the first.
        self.retries: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}        # by lane
        self.queue_wait: dict[str, Histogram] = {}
        self.first_token: dict[str, Histogram] = {}

    def request(self, op: str, model: str | None, lane: str | None, tenant: str | None,
                code: str, elapsed: float, result: Mapping[str, Any] | None,
                model_request: bool) -> None:
        """One finished request; ``model_request``: a generation or embedding of its own
        (a batch's items are, the batch op as a whole is not), which the histograms,
        tokens and retries count."""
        labels = (op, self.model(model) if model else "", lane or "",
                  self.tenant(tenant) if tenant else "")
        key = (*labels, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        if not model_request or not lane:
            return
        _histogram(self.latency, lane, LATENCY_BUCKETS).observe(elapsed)
        if result:
            for kind, field in (("prompt", "prompt_tokens"), ("generation", "completion_tokens")):
                count = int(result.get(field) or 0)
                if count:
                    token_key = (kind, *labels[1:])
                    self.tokens[token_key] = self.tokens.get(token_key, 0) + count
            extra = int(result.get("attempts") or 1) - 1
            if extra > 0:
                self.retries[(op, lane)] = self.retries.get((op, lane), 0) + extra

    def waited(self, lane: str, seconds: float) -> None:
        _histogram(self.queue_wait, lane, FIRST_TOKEN_BUCKETS).observe(seconds)

    def first_token_after(self, lane: str, seconds: float) -> None:
        _histogram(self.first_token, lane, FIRST_TOKEN_BUCKETS).observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        def histograms(by_lane: dict[str, Histogram]) -> dict[str, dict[str, Any]]:
            return {lane: {"buckets": h.cumulative(), "sum": h.sum, "count": h.count}
                    for lane, h in by_lane.items()}
        return {"requests": dict(self.requests), "tokens": dict(self.tokens),
                "retries": dict(self.retries), "latency": histograms(self.latency),
                "queue_wait": histograms(self.queue_wait),
                "first_token": histograms(self.first_token)}


def _histogram(by_lane: dict[str, Histogram], lane: str, buckets: tuple[float, ...]) -> Histogram:
    histogram = by_lane.get(lane)
    if histogram is None:
        histogram = by_lane[lane] = Histogram(buckets)
    return histogram
