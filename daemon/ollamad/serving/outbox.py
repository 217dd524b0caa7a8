"""Replies from any thread to the I/O thread, and their delivery to clients.

:class:`Outbox` is the hand-over: workers ``put`` replies and wake the I/O
thread through a pipe of its own (signals have another, so a flood of
wake-ups can never make a signal be lost).

:class:`Delivery` runs on the I/O thread and sends without ever blocking it.
A reply the client's connection cannot take now (its high-water mark is
reached: the client is not reading) waits in that connection's backlog, in
order, and goes out on a later turn, so a final reply is never dropped
because chunks came first. A reply to a peer that is gone (libzmq's
``EHOSTUNREACH`` with ``ROUTER_MANDATORY``) cancels the request it belongs
to. A backlog the client has not drained for :data:`BACKLOG_MAX_AGE`
seconds is given up, logged and counted.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Callable

from ollamad.serving.exchange import Reply
from ollamad.serving.router import RouterSocket, SendResult

log = logging.getLogger(__name__)

#: How long replies wait for a connection that takes none of them.
BACKLOG_MAX_AGE = 120.0


class WakePipe:
    """A non-blocking pipe whose only job is to wake a poll."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:
            pass  # full of wake-ups already: the reader will look

    def drain(self) -> bytes:
        data = bytearray()
        while True:
            try:
                piece = os.read(self.read_fd, 4096)
            except BlockingIOError:
                return bytes(data)
            if not piece:
                return bytes(data)
            data += piece

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class Outbox:
    """Replies handed to the I/O thread (thread-safe ``put``)."""

    def __init__(self) -> None:
        self.pipe = WakePipe()
        self._queue: collections.deque[Reply] = collections.deque()

    def put(self, reply: Reply) -> None:
        self._queue.append(reply)
        self.pipe.wake()

    def wake(self) -> None:
        self.pipe.wake()

    def pop(self) -> Reply | None:
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def close(self) -> None:
        self.pipe.close()


class Delivery:
    """Sends replies on the I/O thread; per-connection backlogs for slow readers."""

    def __init__(self, router: RouterSocket, on_dropped: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic):
        self._router = router
        self._on_dropped = on_dropped
        self._clock = clock
        #: route -> (time the route last took a message or began to wait, replies)
        self._backlogs: dict[tuple[bytes, ...], tuple[float, collections.deque[Reply]]] = {}

    def backlog_size(self) -> int:
        return sum(len(replies) for _, replies in self._backlogs.values())

    def send(self, reply: Reply) -> None:
        waiting = self._backlogs.get(reply.route)
        if waiting is not None:   # keep the order: behind what already waits
            waiting[1].append(reply)
            return
        outcome = self._router.send(reply.route, reply.payload)
        if outcome is SendResult.SENT:
            self._sent(reply)
        elif outcome is SendResult.FULL:
            self._backlogs[reply.route] = (self._clock(), collections.deque([reply]))
        else:
            self._gone(reply)

    def retry(self, budget_until: float) -> None:
        """Send what waits, connection by connection, until ``budget_until`` (monotonic)."""
        now = self._clock()
        for route in list(self._backlogs):
            since, replies = self._backlogs[route]
            while replies and self._clock() < budget_until:
                outcome = self._router.send(route, replies[0].payload)
                if outcome is SendResult.FULL:
                    break
                reply = replies.popleft()
                if outcome is SendResult.SENT:
                    since = now
                    self._sent(reply)
                else:
                    self._gone(reply)
            if not replies:
                del self._backlogs[route]
            elif now - since > BACKLOG_MAX_AGE:
                log.warning("gave up %d replies to a client that read nothing for %g s",
                            len(replies), BACKLOG_MAX_AGE)
                for reply in replies:
                    self._gone(reply)
                del self._backlogs[route]
            else:
                self._backlogs[route] = (since, replies)

    def _sent(self, reply: Reply) -> None:
        if reply.chunk_of is not None:
            reply.chunk_of.chunk_sent()

    def _gone(self, reply: Reply) -> None:
        """The peer cannot be reached: nobody waits for this request any more."""
        self._on_dropped()
        exchange = reply.chunk_of
        if exchange is not None:
            exchange.chunk_sent()
            exchange.reject_gone()
