"""The blocking client's sockets: one :class:`Channel` per thread, shared by
every call and stream of that thread.

How a channel's threads take turns
----------------------------------
Normally only the thread that owns a channel uses it, and a call runs
straight through on the caller's thread: send, poll, receive, with no
hand-off to any other thread. Other threads come in rarely: a stream the
owner started and another thread iterates, a stream's garbage collection
(which may run in any thread), ``Client.close()`` from another thread. For
them the channel keeps its bookkeeping under one lock, which is never held
while blocked on the socket, and a "socket busy" token that one thread at a
time holds to use the socket:

- *Reading.* The holder of the token polls the socket and files every reply
  in its request's mailbox (:class:`~._demux.OpenRequests`); a thread whose
  reply another thread filed takes it from its mailbox when woken. So a
  stream iterated from another thread is correct: its chunks reach it in
  order, whichever thread read them, at worst one poll slice
  (:data:`LIVENESS_CHECK_MS`) later.
- *Sending.* A thread that wants to send waits for the token; readers give
  it up after every poll slice and make way for waiting senders.
- *Cancelling and closing* never wait for the token: a ``cancel`` is queued,
  and ``close()`` only marks the channel. Whoever holds the token does that
  work when it lets go (at once if nobody holds it): it sends the queued
  cancels, and closes the socket once the channel is closing and no request
  is open. A request is open from just before its send to its final reply,
  so ``close()`` can never take the socket from under it, and a call that
  has not opened its request yet fails with a plain "closed" error.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable

import zmq

from . import protocol
from ._calls import Outgoing, client_closed, no_reply, poll_ms, unreachable, went_away
from ._connection import LIVENESS_CHECK_MS, close_socket, is_connected, open_dealer, \
    process_context
from ._curve import CurveKeys
from ._demux import OpenRequests
from ._endpoints import CONNECT_CHECK_S, EndpointsBase, RouteBase
from .errors import Unavailable

_live_thread_channels: weakref.WeakSet[ThreadChannels] = weakref.WeakSet()


class Channel:
    """One DEALER socket and the requests open on it (see the module docstring)."""

    def __init__(self, endpoint: str, curve: CurveKeys | None = None,
                 tally: Callable[[int], None] | None = None):
        """``tally``: told +1/-1 as requests open and close (see ``OpenRequests``)."""
        self.endpoint = endpoint
        self.curve = curve
        self.pid = os.getpid()
        #: ``time.monotonic()`` when the socket was made (see ``_endpoints.FIRST_CONNECT_S``).
        self.opened_at = time.monotonic()
        self.socket = open_dealer(process_context(), endpoint, curve)
        self._requests = OpenRequests(tally)
        # Re-entrant: a stream's finalizer (abandon) may run during garbage
        # collection in a thread that already holds it.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._socket_busy = False
        self._senders_waiting = 0
        self._closing = False
        #: Whether the socket had a connection when last looked at (see :meth:`connected`).
        self._seen_connected = False
        self._finalizer = weakref.finalize(self, close_socket, self.pid, self.socket)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def connected(self) -> bool:
        """Whether the socket has a connection to the daemon; while another thread
        holds the socket, whether it had one when last looked at."""
        with self._lock:
            if not self._socket_busy and not self.closed and self.pid == os.getpid():
                self._seen_connected = is_connected(self.socket)
            return self._seen_connected

    def has(self, request_id: str) -> bool:
        """Whether the request is open on this channel."""
        return request_id in self._requests

    def start(self, outgoing: Outgoing, connect_timeout: float, *, stream: bool = False) -> None:
        """Open the request and send it, or raise with nothing left open.

        ``Unavailable`` if the client is closed or no connection comes up
        within ``connect_timeout``.
        """
        self._check_process()
        request_id = outgoing.request_id
        with self._changed:
            if self._closing:
                raise client_closed(self.endpoint)
            self._requests.open(request_id, stream=stream)
            if self._socket_busy:
                try:
                    self._wait_for_socket(connect_timeout)
                except BaseException:
                    self._requests.abandon(request_id)
                    raise
            self._socket_busy = True
        try:  # outside the lock: waiting for a connection may take connect_timeout
            if not self.socket.poll(poll_ms(connect_timeout), zmq.POLLOUT):
                raise unreachable(self.endpoint, connect_timeout, self.curve)
            try:
                self.socket.send(outgoing.frame, zmq.NOBLOCK)
            except zmq.Again:  # the connection dropped since the poll
                raise unreachable(self.endpoint, connect_timeout, self.curve) from None
        except BaseException:
            with self._changed:
                # Sent or not, a cancel is harmless: a daemon that never saw
                # the id answers {"cancelled": false}, and is dropped here.
                self._requests.abandon(request_id)
                self._release_socket()
            raise
        with self._changed:
            self._release_socket()

    def receive(self, outgoing: Outgoing) -> protocol.Reply:
        """The request's next chunk or final reply (the final one closes the request).

        Raises ``RequestTimeout`` at the deadline, ``Unavailable`` if the
        daemon disconnects first, ``RequestAbandoned`` if another thread
        cancelled the request meanwhile.
        """
        self._check_process()
        with self._changed:
            while True:
                reply = self._requests.take(outgoing.request_id)
                if reply is not None:
                    if reply.final and self._closing:
                        self._settle()
                    return reply
                wait_ms = outgoing.remaining_ms()
                if wait_ms <= 0:
                    raise no_reply(self.endpoint, outgoing)
                slice_ms = min(wait_ms, LIVENESS_CHECK_MS)
                if self._socket_busy or self._senders_waiting:
                    # Another thread reads (and files our replies) or wants to send.
                    self._changed.wait(slice_ms / 1000)
                    continue
                self._socket_busy = True
                try:
                    self._read(slice_ms)
                finally:
                    self._release_socket()

    def abandon(self, request_id: str) -> None:
        """Cancel the request if it is still open; from any thread, never blocking on the socket.

        The ``cancel`` goes out now if the socket is free, else when its
        current user lets go of it (within one poll slice).
        """
        if self.pid != os.getpid():
            return  # a parent's request, on a socket this child must not touch
        with self._changed:
            if self._requests.abandon(request_id):
                self._changed.notify_all()  # a thread waiting for it must see it go
                self._settle()

    #: What a stream's finalizer calls: :meth:`abandon` is safe from any thread already.
    abandon_soon = abandon

    def close(self) -> None:
        """Cancel open streams, refuse new requests, and close the socket once
        the open calls have their final replies (at once if there are none)."""
        if self.pid != os.getpid():
            return
        with self._changed:
            self._closing = True
            self._requests.abandon_streams()
            self._changed.notify_all()
            self._settle()

    # -- the socket token (all with the lock held) --------------------------

    def _wait_for_socket(self, connect_timeout: float) -> None:
        """Wait, as a sender, until no thread holds the socket (readers make way)."""
        self._senders_waiting += 1
        try:
            if not self._changed.wait_for(lambda: not self._socket_busy, connect_timeout):
                raise Unavailable(f"the connection to ollamad at {self.endpoint} stayed busy "
                                  f"in another thread for {connect_timeout:g} s")
        finally:
            self._senders_waiting -= 1

    def _read(self, timeout_ms: int) -> None:
        """Poll once, with the lock released, and file what arrives."""
        frame = None
        connected = True
        try:
            self._lock.release()
            if self.socket.poll(timeout_ms, zmq.POLLIN):
                frame = self.socket.recv(zmq.NOBLOCK)
            else:
                connected = is_connected(self.socket)
        finally:
            self._lock.acquire()
        if frame is not None:
            if self._requests.deliver(frame) is not None:
                self._changed.notify_all()
        elif not connected:
            self._requests.fail_all(went_away(self.endpoint))
            self._changed.notify_all()

    def _release_socket(self) -> None:
        """Do what waited for the socket, then hand the token back."""
        try:
            while cancels := self._requests.take_cancels():  # a finalizer may add more meanwhile
                for cancel in cancels:
                    try:
                        self.socket.send(cancel, zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # no connection: the daemon cancels that connection's requests itself
            if self._closing and not self._requests:
                self._finalizer()
        finally:
            self._socket_busy = False
            self._changed.notify_all()

    def _settle(self) -> None:
        """Send queued cancels and close if due, unless a token holder will."""
        if not self._socket_busy and not self.closed:
            self._socket_busy = True
            self._release_socket()

    def _check_process(self) -> None:
        if self.pid != os.getpid():
            raise Unavailable("this request was started in the parent process; a forked "
                              "child cannot use its connection")


class ThreadChannels:
    """Each thread's own :class:`Channel` to one endpoint."""

    def __init__(self, endpoint: str, curve: CurveKeys | None = None,
                 tally: Callable[[int], None] | None = None):
        self.endpoint = endpoint
        self.curve = curve
        self._tally = tally
        self._local = threading.local()
        self._closed = False
        self._forget_inherited()
        _live_thread_channels.add(self)

    def _forget_inherited(self) -> None:
        # Also run in a forked child: a lock held by another parent thread at
        # fork time would stay locked forever, so the child gets a new one.
        self._lock = threading.Lock()
        self._all: weakref.WeakSet[Channel] = weakref.WeakSet()

    def current(self) -> Channel:
        """This thread's channel (a new one in a forked child)."""
        channel: Channel | None = getattr(self._local, "channel", None)
        if channel is None or channel.pid != os.getpid():
            with self._lock:
                if self._closed:  # checked with close_all's lock: no channel escapes it
                    raise client_closed(self.endpoint)
                channel = self._local.channel = Channel(self.endpoint, self.curve, self._tally)
                self._all.add(channel)
        return channel

    def close_all(self) -> None:
        """Close every channel (each one once its open calls have ended)."""
        with self._lock:
            self._closed = True
            channels = list(self._all)
        for channel in channels:
            channel.close()


class Route(RouteBase):
    """One thread's channel to each of several endpoints, used as one channel: each
    request goes out on the channel :class:`LeastOutstanding` chooses."""

    def start(self, outgoing: Outgoing, connect_timeout: float, *, stream: bool = False) -> None:
        """Send the request to an endpoint that is up, or raise ``Unavailable`` with
        nothing left open (see ``Channel.start``).

        A send that fails (its connection went down meanwhile) goes to another
        endpoint; all of this within ``connect_timeout``.
        """
        deadline = time.monotonic() + connect_timeout
        failed: dict[int, Unavailable] = {}
        while True:
            index = self._next_try(failed, deadline, connect_timeout)
            if index is None:
                time.sleep(CONNECT_CHECK_S)
                continue
            try:
                self.channels[index].start(outgoing, max(0.0, deadline - time.monotonic()),
                                           stream=stream)
                return
            except Unavailable as exc:  # nothing was sent: another endpoint may take it
                failed[index] = exc

    def receive(self, outgoing: Outgoing) -> protocol.Reply:
        """See ``Channel.receive``."""
        return self._carrying(outgoing.request_id).receive(outgoing)


class EndpointChannels(EndpointsBase):
    """A :class:`ThreadChannels` per endpoint; :meth:`current` gives this thread's
    :class:`Route`."""

    per_endpoint = ThreadChannels
    route = Route


def _after_fork_in_child() -> None:
    for channels in list(_live_thread_channels):
        channels._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)
