"""The asyncio client's sockets: one :class:`AsyncChannel` per event loop,
shared by every call and stream of the client's coroutines on that loop.

No background task: the coroutines waiting on a channel take turns reading
its socket. One at a time (the *reader*) polls it and files each reply in
its request's mailbox (``_demux.OpenRequests``), waking the coroutine it
belongs to; the others sleep until their mail comes or the reader leaves,
and when the reader has its own reply (or is cancelled, or fails) it wakes
another to take over. So no task's failure strands the rest, and a channel
needs nothing from its loop but the loop itself: a client works across
``asyncio.run`` calls and on several loops, with a socket for each.

Cancels are fire-and-forget: sent at once, synchronously, through a plain
(blocking-API) view of the same socket, so that a cancelled task or a
finalizer can send one without awaiting. Everything here runs on the loop's
thread; finalizers, which may run in any thread at any moment, only
schedule their work on it (:meth:`AsyncChannel.abandon_soon`).
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from . import protocol
from ._calls import Outgoing, client_closed, no_reply, poll_ms, unreachable, went_away
from ._connection import LIVENESS_CHECK_MS, close_socket, is_connected, open_dealer, \
    process_context
from ._curve import CurveKeys
from ._demux import OpenRequests
from ._endpoints import CONNECT_CHECK_S, EndpointsBase, RouteBase
from .errors import Unavailable

_async_context: zmq.asyncio.Context | None = None
_async_context_base: zmq.Context | None = None


def _context() -> zmq.asyncio.Context:
    """An asyncio view (shadow) of the process context; a new one after fork."""
    global _async_context, _async_context_base
    base = process_context()
    if _async_context is None or _async_context_base is not base:
        _async_context, _async_context_base = zmq.asyncio.Context(shadow=base), base
    return _async_context


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class AsyncChannel:
    """One DEALER socket on one event loop and the requests open on it."""

    def __init__(self, endpoint: str, loop: asyncio.AbstractEventLoop,
                 curve: CurveKeys | None = None, tally: Callable[[int], None] | None = None):
        """``tally``: told +1/-1 as requests open and close (see ``OpenRequests``)."""
        self.endpoint = endpoint
        self.curve = curve
        self.loop = loop
        self.pid = os.getpid()
        #: ``time.monotonic()`` when the socket was made (see ``_endpoints.FIRST_CONNECT_S``).
        self.opened_at = time.monotonic()
        self.socket = open_dealer(_context(), endpoint, curve)
        self._plain_socket = zmq.Socket.shadow(self.socket.underlying)  # for cancels
        self._requests = OpenRequests(tally)
        self._reading = False
        #: Request id -> the future its waiting coroutine sleeps on.
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._closing = False
        self._finalizer = weakref.finalize(self, close_socket, self.pid, self.socket)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def connected(self) -> bool:
        """Whether the socket has a connection to the daemon (on the loop's thread)."""
        return not self.closed and is_connected(self.socket)

    def has(self, request_id: str) -> bool:
        """Whether the request is open on this channel."""
        return request_id in self._requests

    async def start(self, outgoing: Outgoing, connect_timeout: float, *,
                    stream: bool = False) -> None:
        """Open the request and send it, or raise with nothing left open (see ``Channel.start``)."""
        if self._closing:
            raise client_closed(self.endpoint)
        self._requests.open(outgoing.request_id, stream=stream)
        try:
            if not await self.socket.poll(poll_ms(connect_timeout), zmq.POLLOUT):
                raise unreachable(self.endpoint, connect_timeout, self.curve)
            try:
                await self.socket.send(outgoing.frame, zmq.NOBLOCK)
            except zmq.Again:  # the connection dropped since the poll
                raise unreachable(self.endpoint, connect_timeout, self.curve) from None
        except BaseException:
            self.abandon(outgoing.request_id)  # sent or not, a cancel is harmless
            raise

    async def receive(self, outgoing: Outgoing) -> protocol.Reply:
        """The request's next chunk or final reply (see ``Channel.receive``)."""
        request_id = outgoing.request_id
        reading = False
        try:
            while True:
                reply = self._requests.take(request_id)
                if reply is not None:
                    return reply
                wait_ms = outgoing.remaining_ms()
                if wait_ms <= 0:
                    raise no_reply(self.endpoint, outgoing)
                slice_ms = min(wait_ms, LIVENESS_CHECK_MS)
                if self._reading and not reading:
                    await self._wait_for_mail(request_id, slice_ms)
                    continue
                self._reading = reading = True
                await self._read(slice_ms)
        finally:
            if reading:
                self._reading = False
            self._settle()
            if not self._reading:
                self._wake_one()  # someone must read for those still waiting

    def abandon(self, request_id: str) -> None:
        """Cancel the request if it is still open; from any thread. On the
        loop's thread (the usual case) the ``cancel`` goes out at once."""
        if self.pid == os.getpid():
            self._on_loop(self._abandon, request_id)

    def abandon_soon(self, request_id: str) -> None:
        """:meth:`abandon` from a finalizer: any thread, any moment, so on the loop's own time."""
        if self.pid == os.getpid():
            self._on_loop(self._abandon, request_id, defer=True)

    def close(self) -> None:
        """Cancel open streams, refuse new requests, and close the socket once
        the open calls have ended. From any thread."""
        if self.pid == os.getpid():
            self._on_loop(self._close)

    def _abandon(self, request_id: str) -> None:
        if self._requests.abandon(request_id):
            _wake(self._waiting.get(request_id))  # its waiter must see it go
            self._settle()

    def _close(self) -> None:
        self._closing = True
        self._requests.abandon_streams()
        for future in list(self._waiting.values()):
            _wake(future)
        self._settle()

    # -- on the loop's thread ----------------------------------------------

    async def _read(self, timeout_ms: int) -> None:
        """Poll once and file what arrives."""
        if await self.socket.poll(timeout_ms, zmq.POLLIN):
            request_id = self._requests.deliver(await self.socket.recv(zmq.NOBLOCK))
            if request_id is not None:
                _wake(self._waiting.get(request_id))
        elif not is_connected(self.socket):
            self._requests.fail_all(went_away(self.endpoint))
            for future in list(self._waiting.values()):
                _wake(future)

    async def _wait_for_mail(self, request_id: str, timeout_ms: int) -> None:
        future = self.loop.create_future()
        self._waiting[request_id] = future
        timer = self.loop.call_later(timeout_ms / 1000, _wake, future)
        try:
            await future
        finally:
            timer.cancel()
            if self._waiting.get(request_id) is future:
                del self._waiting[request_id]

    def _wake_one(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_result(None)
                return

    def _settle(self) -> None:
        """Send the queued cancels; close the socket if closing and nothing is open or read."""
        if self.closed:
            return
        cancels = self._requests.take_cancels()
        for cancel in cancels:
            try:
                self._plain_socket.send(cancel, zmq.NOBLOCK)
            except zmq.Again:
                pass  # no connection: the daemon cancels that connection's requests itself
        if cancels and not self.loop.is_closed():
            # The plain send may have consumed the edge-triggered wake-up a
            # pending poll waits for; reading EVENTS through the asyncio
            # socket re-arms it.
            self.socket.get(zmq.EVENTS)
        if self._closing and not self._requests and not self._reading:
            self._finalizer()

    def _on_loop(self, callback: Callable[..., Any], *args: Any, defer: bool = False) -> None:
        """Run ``callback`` on the loop's thread: now if we are on it (unless
        ``defer``) or it is closed (nobody else can use the socket then)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self.loop.is_closed() or (running is self.loop and not defer):
            callback(*args)
            return
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # closed meanwhile
            callback(*args)


class LoopChannels:
    """A client's :class:`AsyncChannel` for each event loop it is used on."""

    def __init__(self, endpoint: str, curve: CurveKeys | None = None,
                 tally: Callable[[int], None] | None = None):
        self.endpoint = endpoint
        self.curve = curve
        self._tally = tally
        self._channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncChannel] = \
            weakref.WeakKeyDictionary()
        self._closed = False

    def current(self) -> AsyncChannel:
        """The running loop's channel (a new one in a forked child)."""
        loop = asyncio.get_running_loop()
        channel = self._channels.get(loop)
        if channel is None or channel.pid != os.getpid():
            if self._closed:
                raise client_closed(self.endpoint)
            self._close_finished_loops()
            channel = self._channels[loop] = AsyncChannel(self.endpoint, loop, self.curve,
                                                          self._tally)
        return channel

    def close_all(self) -> None:
        self._closed = True
        for channel in list(self._channels.values()):
            channel.close()

    def _close_finished_loops(self) -> None:
        # A loop that asyncio.run() has closed may live on a while; its socket need not.
        for loop, channel in list(self._channels.items()):
            if loop.is_closed():
                channel.close()
                del self._channels[loop]


class AsyncRoute(RouteBase):
    """The asyncio counterpart of ``_channel.Route``: one event loop's channel to
    each of several endpoints, used as one channel."""

    async def start(self, outgoing: Outgoing, connect_timeout: float, *,
                    stream: bool = False) -> None:
        """See ``Route.start``."""
        deadline = time.monotonic() + connect_timeout
        failed: dict[int, Unavailable] = {}
        while True:
            index = self._next_try(failed, deadline, connect_timeout)
            if index is None:
                await asyncio.sleep(CONNECT_CHECK_S)
                continue
            try:
                await self.channels[index].start(
                    outgoing, max(0.0, deadline - time.monotonic()), stream=stream)
                return
            except Unavailable as exc:  # nothing was sent: another endpoint may take it
                failed[index] = exc

    async def receive(self, outgoing: Outgoing) -> protocol.Reply:
        """See ``AsyncChannel.receive``."""
        return await self._carrying(outgoing.request_id).receive(outgoing)


class LoopEndpointChannels(EndpointsBase):
    """A :class:`LoopChannels` per endpoint; :meth:`current` gives the running loop's
    :class:`AsyncRoute`."""

    per_endpoint = LoopChannels
    route = AsyncRoute
