"""ZeroMQ plumbing: the process's context, DEALER sockets that notice a lost
daemon, and one socket per thread for the blocking client.

Rules this module keeps:

- **Thread ownership.** ZeroMQ sockets are not thread-safe. :class:`Channel`
  is used by one thread at a time; :class:`ThreadChannels` gives every
  thread its own.
- **Fork.** A forked child must not use, close or terminate its parent's
  sockets or context (libzmq state is not fork-safe, and terminating it in the
  child can hang). Every object here remembers the pid that made it; the
  child makes fresh ones, and the parent's are parked in :data:`_inherited`,
  referenced forever, so their finalisers never run in the child.
- **No silent queueing.** ``IMMEDIATE=1`` makes a send fail while no
  connection exists, instead of queueing the request for a daemon that may
  return long after the caller gave up; ``LINGER=0`` makes closing instant.
- **A lost daemon is noticed.** While waiting for a reply the client wakes
  every :data:`LIVENESS_CHECK_MS` to check that the connection still exists
  (with ``IMMEDIATE=1`` a DEALER is writable exactly while connected, and
  ours never has enough outstanding messages to hit its high-water mark), so
  a caller waiting on a daemon that died hears ``unavailable`` within that
  time rather than at its deadline. (Not a ZeroMQ socket monitor: libzmq
  emits monitor events with a blocking send from its I/O thread, which
  stalls the whole context if the monitor's reader is closed first or falls
  behind.)
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any, TypeVar, cast

import zmq

from . import protocol
from ._calls import Outgoing, accept, no_reply, poll_ms, unreachable, went_away
from .errors import Unavailable

SocketT = TypeVar("SocketT", bound=zmq.Socket)

#: Zmq objects a forked child inherited from its parent: kept referenced so
#: that they are never closed or terminated in the child.
_inherited: list[Any] = []

_context: zmq.Context | None = None
_context_pid = 0
_context_lock = threading.Lock()
_live_thread_channels: weakref.WeakSet[ThreadChannels] = weakref.WeakSet()

#: How often a caller waiting for a reply checks that the daemon is still connected.
LIVENESS_CHECK_MS = 100


def process_context() -> zmq.Context:
    """This process's context for ollamad sockets (a new one after fork).

    A private context rather than ``zmq.Context.instance()``, so that an
    application terminating its own global context cannot break the client.
    """
    global _context, _context_pid
    if _context is None or _context_pid != os.getpid():
        with _context_lock:
            if _context is None or _context_pid != os.getpid():
                if _context is not None:
                    _inherited.append(_context)
                _context, _context_pid = zmq.Context(), os.getpid()
    return _context


def open_dealer(context: zmq.Context[SocketT], endpoint: str) -> SocketT:
    """A DEALER connecting to ``endpoint`` (async if ``context`` is a ``zmq.asyncio.Context``).

    No ``MAXMSGSIZE`` on this side: replies (embeddings) may legitimately be
    larger than requests, and libzmq would drop the connection without a word.
    """
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(endpoint)
    except zmq.ZMQError as exc:
        dealer.close(linger=0)
        raise ValueError(f"cannot connect to ollamad endpoint {endpoint!r}: {exc}") from None
    return dealer


def is_connected(dealer: zmq.Socket) -> bool:
    """Whether an ``IMMEDIATE`` DEALER has a live connection (it is writable)."""
    # getsockopt, not poll(): on an asyncio socket poll() returns a future.
    return bool(cast(int, dealer.getsockopt(zmq.EVENTS)) & zmq.POLLOUT)


def close_socket(pid: int, socket: zmq.Socket) -> None:
    """Close ``socket`` if this process made it; park it if it was inherited."""
    if os.getpid() == pid:
        socket.close(linger=0)
    else:
        _inherited.append(socket)


class Channel:
    """One DEALER socket for the blocking client, used by one thread at a time.

    :meth:`close` may come from another thread (``Client.close()`` at exit
    while workers still wait): a channel in the middle of a call is then
    closed by its own thread when that call ends, never under its feet.
    Garbage collection closes it too (a thread that exits drops its channel).
    """

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.pid = os.getpid()
        self.socket = open_dealer(process_context(), endpoint)
        self._in_use = threading.Lock()
        self._close_when_done = False
        self._finalizer = weakref.finalize(self, close_socket, self.pid, self.socket)

    def close(self) -> None:
        """Close now, or when the call in progress (in another thread) ends."""
        if self._in_use.acquire(blocking=False):
            try:
                self._finalizer()
            finally:
                self._in_use.release()
        else:
            self._close_when_done = True

    @contextlib.contextmanager
    def _using(self) -> Iterator[zmq.Socket]:
        with self._in_use:
            if not self._finalizer.alive:
                raise Unavailable(f"the connection to ollamad at {self.endpoint} was closed")
            try:
                yield self.socket
            finally:
                if self._close_when_done:
                    self._finalizer()

    def send(self, outgoing: Outgoing, connect_timeout: float) -> None:
        """Send the request, or raise ``Unavailable`` if no connection comes up in time."""
        with self._using() as socket:
            if not socket.poll(poll_ms(connect_timeout), zmq.POLLOUT):
                raise unreachable(self.endpoint, connect_timeout)
            try:
                socket.send(outgoing.frame, zmq.NOBLOCK)
            except zmq.Again:  # the connection dropped since the poll
                raise unreachable(self.endpoint, connect_timeout) from None

    def receive(self, outgoing: Outgoing) -> protocol.Reply:
        """The next chunk or final reply for ``outgoing``; other messages are dropped.

        Raises ``RequestTimeout`` at the deadline, ``Unavailable`` if the
        daemon disconnects first.
        """
        with self._using() as socket:
            while True:
                wait_ms = outgoing.remaining_ms()
                if wait_ms <= 0:
                    raise no_reply(self.endpoint, outgoing)
                if socket.poll(min(wait_ms, LIVENESS_CHECK_MS), zmq.POLLIN):
                    reply = accept(socket.recv(zmq.NOBLOCK), outgoing.request_id)
                    if reply is not None:
                        return reply
                elif not is_connected(socket):
                    raise went_away(self.endpoint)


class ThreadChannels:
    """Each thread's own :class:`Channel` to one endpoint, plus private ones for streams."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self._local = threading.local()
        self._forget_inherited()
        _live_thread_channels.add(self)

    def _forget_inherited(self) -> None:
        # Also run in a forked child: a lock held by another parent thread at
        # fork time would stay locked forever, so the child gets a new one.
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[Channel] = weakref.WeakSet()

    def current(self) -> Channel:
        """This thread's channel (a new one in a forked child)."""
        channel: Channel | None = getattr(self._local, "channel", None)
        if channel is None or channel.pid != os.getpid():
            channel = self._local.channel = self.new()
        return channel

    def new(self) -> Channel:
        """A channel of its own (for a stream), closed by :meth:`close_all` too."""
        channel = Channel(self.endpoint)
        with self._lock:
            self._open.add(channel)
        return channel

    def discard_current(self) -> None:
        """Close this thread's channel; the next :meth:`current` makes a new one."""
        channel: Channel | None = getattr(self._local, "channel", None)
        self._local.channel = None
        if channel is not None:
            channel.close()

    def close_all(self) -> None:
        """Close every channel (those mid-call, when their call ends)."""
        with self._lock:
            channels = list(self._open)
            self._open = weakref.WeakSet()
        for channel in channels:
            channel.close()


def _after_fork_in_child() -> None:
    global _context_lock
    _context_lock = threading.Lock()
    for channels in list(_live_thread_channels):
        channels._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)
