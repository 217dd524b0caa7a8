"""Several endpoints (ollamad on several GPU hosts): which one gets each request.

The policy is :class:`LeastOutstanding`, a pure object: among the endpoints
that are up (have a connection), the one with the fewest requests this client
has open on it; ties go round robin, so a sequential caller spreads too. A
slow or overloaded daemon keeps this client's requests open longer, so its
count stays higher and it gets fewer new ones: the count weighs in each
daemon's speed and load without asking it (the daemons' own ``status`` is
not polled; see README, "Several endpoints").

:class:`RouteBase` is what the blocking and the asyncio *routes* share (the
channels of one thread or event loop, one per endpoint, presented as one
channel): picking a channel that is up, finding the channel a request went
out on, and the error when none is reachable. Sending, waiting and the
failover loop are theirs (``_channel.Route``, ``_async_channel.AsyncRoute``).
Zmq does the rest: a down endpoint's socket reconnects in the background,
and the route sees it up again as soon as it has a connection.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ._calls import unreachable
from .errors import Unavailable

#: How often a request that finds no endpoint up looks again, within its
#: ``connect_timeout`` (a fresh thread's sockets connect within a millisecond
#: or two on ipc and loopback tcp).
CONNECT_CHECK_S = 0.002

#: How long a new socket counts as connecting rather than down (a daemon on the
#: same host or in the same data centre connects within a millisecond or so).
FIRST_CONNECT_S = 0.05

_live_choosers: weakref.WeakSet[LeastOutstanding] = weakref.WeakSet()


class LeastOutstanding:
    """Chooses an endpoint per request: the least outstanding of those up, ties in turn.

    Thread-safe. :meth:`tally` (a request opened or closed on an endpoint)
    may be called from any thread at any moment, garbage-collection
    finalizers included, so it takes no lock: it appends to a deque, which
    :meth:`choose` folds into the counts under its own lock.
    """

    def __init__(self, count: int):
        self._reset(count)
        _live_choosers.add(self)

    def _reset(self, count: int) -> None:
        # Also run in a forked child: its requests are its own, and a lock
        # another parent thread held at fork time would stay locked.
        self._lock = threading.Lock()
        self._open = [0] * count
        self._changes: deque[tuple[int, int]] = deque()
        self._next = 0

    def tally(self, index: int, change: int) -> None:
        """A request opened (+1) or closed (-1) on endpoint ``index``."""
        self._changes.append((index, change))

    def outstanding(self) -> list[int]:
        """Requests open per endpoint, now."""
        with self._lock:
            self._fold()
            return list(self._open)

    def choose(self, up: Sequence[bool]) -> int | None:
        """The endpoint for the next request, among those whose ``up[i]`` is true;
        ``None`` when none is."""
        with self._lock:
            self._fold()
            count = len(self._open)
            best: int | None = None
            for step in range(count):
                index = (self._next + step) % count
                if up[index] and (best is None or self._open[index] < self._open[best]):
                    best = index
            if best is not None:
                self._next = (best + 1) % count
            return best

    def _fold(self) -> None:
        while self._changes:
            index, change = self._changes.popleft()
            self._open[index] += change


class RouteBase:
    """One thread's (or event loop's) channel to each endpoint, used as one channel."""

    def __init__(self, channels: Sequence[Any], chooser: LeastOutstanding):
        self.channels = channels
        self._chooser = chooser

    def _next_try(self, failed: dict[int, Unavailable], deadline: float,
                  connect_timeout: float) -> int | None:
        """The endpoint to try next: one that is up and has not failed this request;
        ``None``: look again shortly. Raises ``Unavailable`` when every endpoint
        failed, or none came up by ``deadline``."""
        now = time.monotonic()
        up = [channel.connected() for channel in self.channels]
        # A socket made just now (a thread's first request) may still be
        # connecting: it is waited for, not passed over for whichever
        # endpoint happened to connect first.
        index = self._chooser.choose([
            i not in failed and (up[i] or now - channel.opened_at < FIRST_CONNECT_S)
            for i, channel in enumerate(self.channels)])
        if index is not None and up[index]:
            return index
        if len(failed) == len(self.channels) or now >= deadline:
            raise self._none_reachable(failed, connect_timeout)
        return None

    def _none_reachable(self, failed: dict[int, Unavailable],
                        connect_timeout: float) -> Unavailable:
        """Why no endpoint took the request: each one's own reason."""
        reasons = [(failed.get(i) or unreachable(channel.endpoint, connect_timeout)).message
                   for i, channel in enumerate(self.channels)]
        return Unavailable(f"no ollamad endpoint of {len(reasons)} took the request: "
                           + "; ".join(reasons))

    def _carrying(self, request_id: str) -> Any:
        """The channel the request is open on (the first one if none: it reports the
        request as abandoned, as a single channel would)."""
        for channel in self.channels:
            if channel.has(request_id):
                return channel
        return self.channels[0]

    def abandon(self, request_id: str) -> None:
        for channel in self.channels:
            channel.abandon(request_id)

    def abandon_soon(self, request_id: str) -> None:
        for channel in self.channels:
            channel.abandon_soon(request_id)


class EndpointsBase:
    """A client's channels to several endpoints, and the choice between them:
    one ``per_endpoint`` (``ThreadChannels`` or ``LoopChannels``) each, and a
    ``route`` over this thread's (or loop's) channels per request."""

    per_endpoint: Callable[[str, Any, Callable[[int], None]], Any]
    route: Callable[[list[Any], LeastOutstanding], Any]

    def __init__(self, endpoints: Sequence[str], curve: Any = None):
        """``curve``: the ``CurveKeys`` every tcp endpoint uses (one server key pair
        for the pool of daemons), or None."""
        self.endpoint = ",".join(endpoints)
        self.chooser = LeastOutstanding(len(endpoints))
        self._each = [self.per_endpoint(endpoint, curve,
                                        functools.partial(self.chooser.tally, index))
                      for index, endpoint in enumerate(endpoints)]

    def current(self) -> Any:
        """This thread's (or running loop's) route."""
        return self.route([channels.current() for channels in self._each], self.chooser)

    def close_all(self) -> None:
        for channels in self._each:
            channels.close_all()


def _after_fork_in_child() -> None:
    for chooser in list(_live_choosers):
        chooser._reset(len(chooser._open))


os.register_at_fork(after_in_child=_after_fork_in_child)
