"""The `/_standin/` control endpoint: faults and counters, for tests.

    GET    /_standin/state        {"pid", "faults", "runners", "loads", "pulls", "stats",
                                  "recent_requests"} (a runner: model, pid, loading,
                                  parallel, size, size_vram, options: its runner options;
                                  pulls from a registry under way: name -> digest, total,
                                  completed of the blob being fetched)
    POST   /_standin/faults       {"kind": K, "count": N|null, ...params} adds a fault
    DELETE /_standin/faults       clears every fault (and releases held requests)
    POST   /_standin/stats/reset  zeroes the counters and recent requests

Every answer is the state after the change. These paths answer even while
the `unresponsive` fault holds every other path.
"""

from __future__ import annotations

import json
import os

from ollamad.testing.standin import log
from ollamad.testing.standin.faults import START_ONLY, FaultBook, make_fault
from ollamad.testing.standin.httpserver import Exchange
from ollamad.testing.standin.registrypull import Progress
from ollamad.testing.standin.runners import RunnerPool
from ollamad.testing.standin.stats import Stats


class Control:
    def __init__(self, faults: FaultBook, stats: Stats, pool: RunnerPool, pulls: Progress):
        self._faults = faults
        self._stats = stats
        self._pool = pool
        self._pulls = pulls

    def state(self) -> dict:
        counters, recent = self._stats.snapshot()
        return {"pid": os.getpid(), "faults": self._faults.describe(),
                "runners": self._pool.runners(), "loads": dict(self._pool.loads),
                "pulls": self._pulls.snapshot(),
                "stats": counters, "recent_requests": recent}

    def dispatch(self, exchange: Exchange):
        route = (exchange.method, exchange.path)
        if route == ("GET", "/_standin/state"):
            pass
        elif route == ("POST", "/_standin/faults"):
            error = self._add_fault(exchange)
            if error:
                return exchange.send_error(400, error)
        elif route == ("DELETE", "/_standin/faults"):
            self._faults.clear()
        elif route == ("POST", "/_standin/stats/reset"):
            self._stats.reset()
        else:
            return exchange.send_error(404, f"no control route {exchange.method} {exchange.path}")
        exchange.send_json(200, self.state())

    def _add_fault(self, exchange: Exchange) -> str | None:
        """Add the fault in the body; returns an error text when the body is wrong."""
        try:
            spec = json.loads(exchange.body or b"null")
        except ValueError as exc:
            return f"body is not JSON: {exc}"
        if not isinstance(spec, dict) or "kind" not in spec:
            return 'body must be a JSON object with a "kind"'
        kind, count = spec.pop("kind"), spec.pop("count", None)
        if kind in START_ONLY:
            return f"{kind} can only be set at start time (--fault, OLLAMAD_STANDIN_FAULTS)"
        try:
            fault = make_fault(kind, count, **spec)
        except ValueError as exc:
            return str(exc)
        if kind == "exit":
            code = fault.params["code"]
            log.event("ERROR", "standin", "exit fault: exiting without stopping runners",
                      code=code)
            exchange.after_response = lambda: os._exit(code)
        else:
            self._faults.add(fault)
        return None
