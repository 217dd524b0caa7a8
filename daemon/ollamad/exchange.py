"""One accepted request and its guarantee: exactly one final reply.

A worker finishing, the I/O thread expiring the deadline and shutdown all
race to finish an exchange; the first wins and the others are no-ops. Chunks
after the final reply are dropped. Replies are handed to ``deliver``, which
queues them for the I/O thread (the only owner of the socket).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

from ollamad.metrics import Metrics
from ollamad_client import protocol
from ollamad_client.protocol import Error, ErrorCode, Request

Deliver = Callable[[tuple[bytes, ...], bytes], None]


class Exchange:
    def __init__(self, request: Request, route: tuple[bytes, ...], deliver: Deliver,
                 metrics: Metrics, received_at: float | None = None):
        self.request = request
        self.route = route
        self.received_at = time.monotonic() if received_at is None else received_at
        self.deadline = self.received_at + request.timeout
        self.cancel = threading.Event()
        self._deliver = deliver
        self._metrics = metrics
        self._lock = threading.Lock()
        self._finished = False
        #: Attempts made so far, reported with a failure.
        self.attempts = 0

    @property
    def finished(self) -> bool:
        return self._finished

    def _claim(self) -> bool:
        with self._lock:
            if self._finished:
                return False
            self._finished = True
        self.cancel.set()  # stop any work still running for it
        return True

    def send_chunk(self, chunk: Mapping[str, Any]) -> None:
        if not self._finished:
            self._deliver(self.route, protocol.encode_chunk(self.request.id, chunk))

    def resolve(self, result: Mapping[str, Any]) -> bool:
        if not self._claim():
            return False
        elapsed = time.monotonic() - self.received_at
        self._metrics.record(self.request.op, elapsed, result=result)
        self._deliver(self.route, protocol.encode_result(self.request.id, result))
        return True

    def reject(self, error: Error) -> bool:
        if not self._claim():
            return False
        elapsed = time.monotonic() - self.received_at
        self._metrics.record(self.request.op, elapsed, error=error)
        self._deliver(self.route, protocol.encode_error(self.request.id, error,
                                                        attempts=self.attempts))
        return True

    def expire(self) -> bool:
        """The deadline passed: answer ``timeout`` (unless already answered)."""
        return self.reject(Error.of(
            ErrorCode.TIMEOUT, f"no result within the request's {self.request.timeout:g} s deadline"))


class BatchExchange(Exchange):
    """A batch: items finish one by one; the final reply holds all, in order.

    At the deadline the items still missing are answered ``timeout`` in the
    list, and the ones that finished keep their results.
    """

    def __init__(self, request: Request, route: tuple[bytes, ...], deliver: Deliver,
                 metrics: Metrics, size: int, received_at: float | None = None):
        super().__init__(request, route, deliver, metrics, received_at)
        self._items: list[dict[str, Any] | None] = [None] * size
        self._missing = size
        self._items_lock = threading.Lock()

    def item_done(self, index: int, outcome: dict[str, Any]) -> None:
        with self._items_lock:
            if self.finished or self._items[index] is not None:
                return
            self._items[index] = outcome
            self._missing -= 1
            complete = self._missing == 0
        if outcome["ok"]:
            self._metrics.record("batch_item", outcome["result"].get("response_time", 0.0),
                                 result=outcome["result"])
        else:
            error = outcome["error"]
            self._metrics.record("batch_item", time.monotonic() - self.received_at,
                                 error=Error(ErrorCode(error["code"]), error["message"],
                                             error["retryable"]))
        if complete:
            self.resolve({"results": self._snapshot(None)})

    def _snapshot(self, missing: Error | None) -> list[dict[str, Any]]:
        with self._items_lock:
            return [item if item is not None else {"ok": False, "error": missing.to_json()}
                    for item in self._items]

    def expire(self) -> bool:
        return self._finish_missing(Error.of(
            ErrorCode.TIMEOUT, f"no result within the batch's {self.request.timeout:g} s deadline"))

    def _finish_missing(self, error: Error) -> bool:
        return self.resolve({"results": self._snapshot(error)})

    def reject(self, error: Error) -> bool:
        # Shutdown or a whole-batch failure: keep what finished, fail the rest.
        if error.code in (ErrorCode.SHUTTING_DOWN, ErrorCode.TIMEOUT):
            return self._finish_missing(error)
        return super().reject(error)
