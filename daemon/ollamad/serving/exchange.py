"""One accepted request and its guarantee: exactly one final reply.

A worker finishing, the I/O thread expiring the deadline, a ``cancel`` op,
the client's connection closing and shutdown all race to finish an
exchange; the first wins and the others are no-ops. Finishing cancels any
work still running for it (:class:`~ollamad.cancellation.Cancellation`) and
lets go of the request's arguments at once: a finished exchange is a small
shell, whatever size the request was.

Replies are handed to ``deliver``, which queues them for the I/O thread (the
only owner of the socket). Stream chunks are flow-controlled: a worker that
has :data:`CHUNK_WINDOW` chunks not yet taken by the client's connection
waits before reading more of Ollama's answer, so a client that does not read
slows its own generation instead of filling the daemon's memory; one that
stops reading for ``stall_timeout`` has its request cancelled. The final
reply never waits behind that window and is never dropped (see
:mod:`.outbox`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from typing import Any, Callable, Mapping

from ollamad.cancellation import Cancellation
from ollamad import requestlog
from ollamad.metrics import Metrics
from ollamad.scheduling.policy import Tenant
from ollamad_client import protocol
from ollamad_client.protocol import Error, ErrorCode, Request

log = logging.getLogger(__name__)

#: Chunks a stream may have on their way to the client before its worker waits.
CHUNK_WINDOW = 64


class Reply:
    """A message for the I/O thread to send: a chunk (``exchange`` set) or a final reply."""

    __slots__ = ("route", "payload", "chunk_of")

    def __init__(self, route: tuple[bytes, ...], payload: bytes,
                 chunk_of: "Exchange | None" = None):
        self.route = route
        self.payload = payload
        self.chunk_of = chunk_of


Deliver = Callable[[Reply], None]


class Exchange:
    def __init__(self, request: Request, route: tuple[bytes, ...], deliver: Deliver,
                 metrics: Metrics, received_at: float | None = None, *,
                 size: int = 0, peer_uid: int | None = None, connection: int | None = None):
        self.request = request
        self.id = request.id
        self.op = request.op
        self.route = route
        self.received_at = time.monotonic() if received_at is None else received_at
        #: The deadline in seconds: the request's, or its profile's (:meth:`admitted`).
        self.timeout = request.timeout
        self.deadline = self.received_at + request.timeout
        #: Whose request it is and its lane, once admitted (model requests only).
        self.tenant: Tenant | None = None
        self.lane: str | None = None
        #: The model it asks for, once its arguments are read (model requests only).
        self.model: str | None = None
        #: Seconds it waited for a worker (the first of a batch's items), once one took it.
        self.queue_wait: float | None = None
        #: Bytes of the request message (for the daemon's bound on queued bytes).
        self.size = size
        #: Who may cancel it: the same connection, or on ipc the same uid.
        self.peer_uid = peer_uid
        self.connection = connection
        self.cancel = Cancellation()
        self._deliver = deliver
        self._metrics = metrics
        self._lock = threading.Condition()
        self._finished = False
        self._chunks_in_transit = 0
        self._on_finish: list[Callable[[Exchange], None]] = []
        #: Attempts made so far, reported with a failure.
        self.attempts = 0
        #: What a worker waits for on its behalf (a model load), named if the deadline passes.
        self.waiting_for: str | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    def elapsed(self) -> float:
        return time.monotonic() - self.received_at

    def admitted(self, tenant: Tenant, lane: str, timeout: float) -> None:
        """Admission named its tenant, lane and deadline (before it is queued or registered)."""
        self.tenant, self.lane = tenant, lane
        self.timeout = timeout
        self.deadline = self.received_at + timeout

    def unbounded(self) -> None:
        """No overall deadline: the op bounds each of its own waits instead (a pull, which
        may take hours while its progress keeps coming)."""
        self.deadline = math.inf

    def on_finish(self, callback: Callable[["Exchange"], None]) -> None:
        """Call ``callback(self)`` once, when the exchange finishes (at once if it has)."""
        with self._lock:
            if not self._finished:
                self._on_finish.append(callback)
                return
        callback(self)

    def _claim(self) -> bool:
        with self._lock:
            if self._finished:
                return False
            self._finished = True
            callbacks, self._on_finish = self._on_finish, []
            self._lock.notify_all()   # a worker waiting for chunk room
        # The arguments may be megabytes; the shell that stays (in the
        # deadline heap, the registry) must not hold them.
        self.request = dataclasses.replace(self.request, args={})
        self.cancel.set()  # stop any work still running for it
        for callback in callbacks:
            callback(self)
        return True

    # -- chunks ------------------------------------------------------------

    def send_chunk(self, chunk: Mapping[str, Any], stall_timeout: float) -> None:
        """Queue a chunk; waits while the client is :data:`CHUNK_WINDOW` chunks behind."""
        waited_until = time.monotonic() + stall_timeout
        with self._lock:
            while self._chunks_in_transit >= CHUNK_WINDOW and not self._finished:
                remaining = waited_until - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            if self._finished:
                return
            stalled = self._chunks_in_transit >= CHUNK_WINDOW
            if not stalled:
                self._chunks_in_transit += 1
        if stalled:
            self.reject(Error.of(ErrorCode.CANCELLED, f"the client read none of its stream "
                                 f"for {stall_timeout:g} s"))
            return
        self._deliver(Reply(self.route, protocol.encode_chunk(self.id, chunk), self))

    def chunk_sent(self) -> None:
        """The I/O thread handed one chunk to the client's connection."""
        with self._lock:
            self._chunks_in_transit -= 1
            self._lock.notify_all()

    # -- the final reply -----------------------------------------------------

    def resolve(self, result: Mapping[str, Any]) -> bool:
        if not self._claim():
            return False
        self._metrics.record(self.op, self.elapsed(), result=result, lane=self.lane,
                             tenant=self.tenant, model=self.model)
        requestlog.finished(self, result, "ok")
        self._deliver_final(lambda: protocol.encode_result(self.id, result))
        return True

    def reject(self, error: Error) -> bool:
        if not self._claim():
            return False
        self._metrics.record(self.op, self.elapsed(), error=error, lane=self.lane,
                             tenant=self.tenant, model=self.model)
        requestlog.finished(self, None, error.code.value)
        self._deliver_final(lambda: protocol.encode_error(self.id, error, attempts=self.attempts))
        return True

    def _deliver_final(self, encode: Callable[[], bytes]) -> None:
        # Claimed already: if encoding fails (a bug), the client must still
        # get its one final reply.
        try:
            payload = encode()
        except Exception as exc:
            log.exception("encoding the reply to %s failed", self.op)
            payload = protocol.encode_error(self.id, Error.of(
                ErrorCode.INTERNAL, f"the reply could not be encoded: {type(exc).__name__}"))
        self._deliver(Reply(self.route, payload))

    def expire(self) -> bool:
        """The deadline passed: answer ``timeout`` (unless already answered)."""
        waiting = f" while waiting for {self.waiting_for}" if self.waiting_for else ""
        return self.reject(Error.of(
            ErrorCode.TIMEOUT,
            f"no result within the request's {self.timeout:g} s deadline{waiting}"))

    def reject_gone(self) -> bool:
        """The client's connection closed: nobody waits for the answer any more."""
        return self.reject(Error.of(ErrorCode.CANCELLED, "the client's connection closed"))


class BatchExchange(Exchange):
    """A batch: items finish one by one; the final reply holds all, in order.

    At the deadline the items still missing are answered ``timeout`` in the
    list, and the ones that finished keep their results.
    """

    def __init__(self, request: Request, route: tuple[bytes, ...], deliver: Deliver,
                 metrics: Metrics, items: int, received_at: float | None = None, **kwargs: Any):
        super().__init__(request, route, deliver, metrics, received_at, **kwargs)
        self._items: list[dict[str, Any] | None] = [None] * items
        self._missing = items
        self._items_lock = threading.Lock()

    def item_done(self, index: int, outcome: dict[str, Any]) -> None:
        with self._items_lock:
            if self.finished or self._items[index] is not None:
                return
            self._items[index] = outcome
            self._missing -= 1
            complete = self._missing == 0
        who = {"lane": self.lane, "tenant": self.tenant, "model": self.model}
        if outcome["ok"]:
            self._metrics.record("batch_item", outcome["result"].get("response_time", 0.0),
                                 result=outcome["result"], **who)
        else:
            error = outcome["error"]
            self._metrics.record("batch_item", time.monotonic() - self.received_at,
                                 error=Error(ErrorCode(error["code"]), error["message"],
                                             error["retryable"]), **who)
        if complete:
            self.resolve({"results": self._snapshot(None)})

    def _snapshot(self, missing: Error | None) -> list[dict[str, Any]]:
        with self._items_lock:
            return [item if item is not None else {"ok": False, "error": missing.to_json()}
                    for item in self._items]

    def expire(self) -> bool:
        return self._finish_missing(Error.of(
            ErrorCode.TIMEOUT, f"no result within the batch's {self.timeout:g} s deadline"))

    def _finish_missing(self, error: Error) -> bool:
        return self.resolve({"results": self._snapshot(error)})

    def reject(self, error: Error) -> bool:
        # Shutdown or a whole-batch failure: keep what finished, fail the rest.
        if error.code in (ErrorCode.SHUTTING_DOWN, ErrorCode.TIMEOUT):
            return self._finish_missing(error)
        return super().reject(error)
