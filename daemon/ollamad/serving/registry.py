"""The I/O thread's book of open requests: by id, by connection, by deadline.

Only the I/O thread uses it. It finds the request a ``cancel`` op names, the
requests to cancel when a client's connection closes, and the next deadline
to answer. Finished exchanges are swept out on the loop's turns (they are
small shells by then: :class:`~ollamad.serving.exchange.Exchange` drops its
arguments when it finishes), so memory follows the requests that are open,
not those answered.

Connections are known by their descriptor, from libzmq's socket monitor
(accepted, disconnected) and each message's ``ZMQ_SRCFD``. A descriptor is
reused after a close; the monitor reports the close before the next accept
on it, and the loop reads monitor events before *each* message, so a request
is not charged to the wrong connection (that would need a new connection to
complete its handshake and send within the microseconds between the two
reads).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

from ollamad.serving.exchange import Exchange

#: Entries that may pile up before a sweep, beyond twice the open ones.
SWEEP_AFTER = 256
#: The longest time between sweeps, in seconds.
SWEEP_INTERVAL = 1.0


class OpenRequests:
    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._by_id: dict[str, list[Exchange]] = {}
        self._by_connection: dict[int, list[Exchange]] = {}
        self._connections: set[int] = set()
        self._deadlines: list[tuple[float, int, Exchange]] = []
        self._sequence = itertools.count()
        self._entries = 0
        self._sweep_at = SWEEP_AFTER
        self._sweep_time = 0.0
        #: Connections shut down because the limit was reached.
        self.refused_connections = 0

    # -- requests ------------------------------------------------------------

    def add(self, exchange: Exchange) -> None:
        self._by_id.setdefault(exchange.id, []).append(exchange)
        if exchange.connection is not None:
            self._by_connection.setdefault(exchange.connection, []).append(exchange)
        heapq.heappush(self._deadlines, (exchange.deadline, next(self._sequence), exchange))
        self._entries += 1

    def find(self, request_id: str) -> list[Exchange]:
        """The open exchanges with this id (ids are unique per client, not per host)."""
        return [e for e in self._by_id.get(request_id, ()) if not e.finished]

    def open(self) -> list[Exchange]:
        return [entry[2] for entry in self._deadlines if not entry[2].finished]

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def due(self, now: float) -> list[Exchange]:
        """Take out the exchanges whose deadline has come."""
        due = []
        while self._deadlines and self._deadlines[0][0] <= now:
            due.append(heapq.heappop(self._deadlines)[2])
        return due

    def sweep(self, now: float) -> None:
        """Forget finished exchanges: at most once a second, or when many piled up."""
        if self._entries < self._sweep_at and now < self._sweep_time:
            return
        self._deadlines = [entry for entry in self._deadlines if not entry[2].finished]
        heapq.heapify(self._deadlines)
        self._by_id = _live(self._by_id)
        self._by_connection = _live(self._by_connection)
        self._entries = len(self._deadlines)
        self._sweep_at = 2 * self._entries + SWEEP_AFTER
        self._sweep_time = now + SWEEP_INTERVAL

    # -- connections -----------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._connections)

    def accepted(self, fd: int) -> bool:
        """A connection opened; False when it is one too many (the caller refuses it)."""
        if len(self._connections) >= self.max_connections:
            self.refused_connections += 1
            return False
        self._connections.add(fd)
        return True

    def closed(self, fd: int) -> list[Exchange]:
        """A connection closed: the open requests that came over it (to cancel)."""
        self._connections.discard(fd)
        return [e for e in self._by_connection.pop(fd, ()) if not e.finished]


def _live(index: dict) -> dict:
    kept = {}
    for key, exchanges in index.items():
        alive = [e for e in exchanges if not e.finished]
        if alive:
            kept[key] = alive
    return kept


def cancellable_by(exchanges: Iterable[Exchange], connection: int | None,
                   uid: int | None) -> list[Exchange]:
    """Those a ``cancel`` from this connection (or, on ipc, this uid) may cancel."""
    return [e for e in exchanges
            if (connection is not None and e.connection == connection)
            or (uid is not None and e.peer_uid == uid)]
