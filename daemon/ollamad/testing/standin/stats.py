"""Request counters the control endpoint reports, so tests can see what a client did.

Only API traffic counts (not `/_standin/` calls). "Generations" are
`POST /api/generate` and `POST /api/chat`, counted at the HTTP level from the
moment the request is read until its answer is finished, however it ends.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

RECENT_BODIES = 50


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._recent: deque[Any] = deque(maxlen=RECENT_BODIES)
        self._in_flight = self._max_in_flight = 0
        self._generations = self._max_generations = 0
        self._completed = 0

    def begin(self, key: str, generation: bool):
        with self._lock:
            self._requests[key] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if generation:
                self._generations += 1
                self._max_generations = max(self._max_generations, self._generations)

    def end(self, generation: bool):
        with self._lock:
            self._in_flight -= 1
            if generation:
                self._generations -= 1

    def completed_generation(self):
        with self._lock:
            self._completed += 1

    def record_body(self, body: Any):
        with self._lock:
            self._recent.append(body)

    def reset(self):
        """Zero the counters; what is in flight right now stays counted as in flight."""
        with self._lock:
            self._requests.clear()
            self._recent.clear()
            self._max_in_flight = self._in_flight
            self._max_generations = self._generations
            self._completed = 0

    def snapshot(self) -> tuple[dict[str, Any], list[Any]]:
        with self._lock:
            counters = {
                "requests": dict(self._requests),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "generations_in_flight": self._generations,
                "max_generations_in_flight": self._max_generations,
                "completed_generations": self._completed,
            }
            return counters, list(self._recent)
