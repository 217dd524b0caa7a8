"""The I/O thread's loop: read, admit, answer, and keep every turn short.

The I/O thread (the main thread) is the only owner of the ROUTER socket.
Each turn it reads connection events (before messages, so that a request is
charged to the right connection), reads messages for at most
:data:`TURN_BUDGET` seconds, then sends the replies other threads queued,
answers requests whose deadline passed, runs the daemon's housekeeping and
pings the systemd watchdog, so whatever arrives, replies and the watchdog
get their turn every few tens of milliseconds.

Each message is decoded, validated and dispatched under its own guard: a
failure answers that message (``bad_request``, or ``internal`` for a bug,
logged with its traceback the first time) and the loop goes on. Signals
arrive on a pipe of their own (``signal.set_wakeup_fd``) and become ordinary
calls on this thread.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Callable

import zmq

from ollamad.metrics import Metrics
from ollamad.notify import Notifier
from ollamad.serving.exchange import BatchExchange, Exchange, Reply
from ollamad.serving.ops import Dispatcher
from ollamad.serving.outbox import Delivery, Outbox, WakePipe
from ollamad.serving.registry import OpenRequests
from ollamad.serving.router import Incoming, Peer, RouterSocket
from ollamad_client import protocol
from ollamad_client.protocol import Error, ErrorCode, ProtocolError

log = logging.getLogger("ollamad")

#: Seconds of reading per turn before replies and the watchdog get theirs.
TURN_BUDGET = 0.02
#: Longest the loop sleeps in poll (it also wakes for replies and signals).
MAX_POLL_SECONDS = 0.5
#: How often replies waiting for a slow client are tried again.
BACKLOG_RETRY_SECONDS = 0.01


class IOLoop:
    def __init__(self, router: RouterSocket, dispatcher: Dispatcher, metrics: Metrics,
                 requests: OpenRequests, outbox: Outbox, notifier: Notifier, *,
                 on_signal: Callable[[int], None], housekeeping: Callable[[float], None],
                 threads_alive: Callable[[], bool]):
        self.router = router
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.requests = requests
        self.outbox = outbox
        self.notifier = notifier
        self.signals = WakePipe()
        self.delivery = Delivery(router, metrics.count_dropped)
        self.stopping = False
        self._on_signal = on_signal
        self._housekeeping = housekeeping
        self._threads_alive = threads_alive
        self._failures_logged: set[tuple[str, str]] = set()
        self._last_refusal_log = 0.0

    def close(self) -> None:
        self.signals.close()

    # -- the loop ---------------------------------------------------------

    def run_until(self, done: Callable[[], bool], max_poll: float = MAX_POLL_SECONDS) -> None:
        poller = zmq.Poller()
        poller.register(self.router.socket, zmq.POLLIN)
        if self.router.monitor is not None:
            poller.register(self.router.monitor, zmq.POLLIN)
        poller.register(self.outbox.pipe.read_fd, zmq.POLLIN)
        poller.register(self.signals.read_fd, zmq.POLLIN)
        while not done():
            events = dict(poller.poll(self._poll_timeout_ms(max_poll)))
            if self.signals.read_fd in events:
                for signum in self.signals.drain():
                    self._on_signal(signum)
            if self.outbox.pipe.read_fd in events:
                self.outbox.pipe.drain()
            self._connection_events()  # also when no message came (closes, new clients)
            if self.router.socket in events:
                self._receive(time.monotonic() + TURN_BUDGET)
            self._tick()

    def _poll_timeout_ms(self, max_poll: float) -> int:
        timeout = max_poll
        deadline = self.requests.next_deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        if self.notifier.watchdog_interval:
            timeout = min(timeout, self.notifier.watchdog_interval / 2)
        if self.delivery.backlog_size():
            timeout = min(timeout, BACKLOG_RETRY_SECONDS)
        return max(1, int(timeout * 1000))

    def _tick(self) -> None:
        """Every turn after reading: replies, deadlines, housekeeping, the watchdog."""
        budget = time.monotonic() + TURN_BUDGET
        self.flush(budget)
        now = time.monotonic()
        for exchange in self.requests.due(now):
            exchange.expire()
        self.flush(budget)
        self.requests.sweep(now)
        self._housekeeping(now)
        # Only a daemon whose every thread lives may tell systemd it is well.
        if self._threads_alive():
            self.notifier.maybe_ping(now)

    def flush(self, budget_until: float) -> None:
        """Send queued replies (those a slow client cannot take yet wait in its backlog)."""
        self.delivery.retry(budget_until)
        while (reply := self.outbox.pop()) is not None:
            self.delivery.send(reply)
        if self.delivery.backlog_size():
            self.delivery.retry(budget_until)

    def _connection_events(self) -> None:
        for event in self.router.connection_events():
            if not event.accepted:
                for exchange in self.requests.closed(event.fd):
                    exchange.reject_gone()
            elif not self.requests.accepted(event.fd):
                self.router.refuse(event.fd)
                now = time.monotonic()
                if now - self._last_refusal_log > 10:
                    self._last_refusal_log = now
                    log.warning("refusing new connections: %d open, max_connections is %d",
                                self.requests.connections, self.requests.max_connections)

    def _receive(self, budget_until: float) -> None:
        while time.monotonic() < budget_until:
            # Connection events first, before each message: a closed
            # connection's descriptor is reused by the next one, and the
            # close is reported (and must be read) before that one's accept.
            self._connection_events()
            incoming = self.router.receive()
            if incoming is None:
                return
            try:
                self._admit(incoming)
            except Exception as exc:  # a bug: answer this message, keep serving
                self._internal_failure(exc, incoming)

    # -- admission ----------------------------------------------------------

    def _admit(self, incoming: Incoming) -> None:
        if incoming.body is None:
            self.metrics.count_dropped()
            return
        try:
            request = protocol.decode_request(incoming.body)
        except ProtocolError as exc:
            error = Error.of(exc.code, str(exc))
            self.metrics.record("invalid", 0.0, error=error)
            if exc.request_id is None:
                self.metrics.count_dropped()
                log.debug("a message without a usable id: %s", exc)
            self.delivery.send(Reply(incoming.route, protocol.encode_error(exc.request_id, error)))
            return
        peer = Peer.from_address(incoming.peer_address, incoming.user_id)
        exchange = self._exchange(request, incoming, peer)
        if self.stopping:
            exchange.reject(Error.of(ErrorCode.SHUTTING_DOWN, "ollamad is shutting down"))
        else:
            self.dispatcher.dispatch(exchange, peer)
        if not exchange.finished:
            self.requests.add(exchange)

    def _exchange(self, request: protocol.Request, incoming: Incoming, peer: Peer) -> Exchange:
        common = dict(size=len(incoming.body or b""), peer_uid=peer.uid,
                      connection=incoming.connection)
        if request.op == "batch":
            prompts = request.args.get("prompts")
            size = len(prompts) if isinstance(prompts, list) else 0
            return BatchExchange(request, incoming.route, self.outbox.put, self.metrics, size,
                                 **common)
        return Exchange(request, incoming.route, self.outbox.put, self.metrics, **common)

    def _internal_failure(self, exc: Exception, incoming: Incoming) -> None:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        signature = (type(exc).__name__, f"{where.filename}:{where.lineno}")
        if signature in self._failures_logged:
            log.error("a message failed again (%s at %s)", *signature)
        else:
            self._failures_logged.add(signature)
            log.exception("a message failed; it is answered `internal` and the daemon goes on")
        error = Error.of(ErrorCode.INTERNAL, f"ollamad failed on this message: "
                         f"{type(exc).__name__}")
        self.metrics.record("invalid", 0.0, error=error)
        try:
            request_id = protocol.decode_request(incoming.body or b"").id
        except Exception:
            request_id = None
        try:
            self.delivery.send(Reply(incoming.route, protocol.encode_error(request_id, error)))
        except Exception:
            log.exception("could not answer a failed message")
