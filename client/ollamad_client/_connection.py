"""ZeroMQ plumbing shared by both clients: the process's context, and DEALER
sockets that notice a lost daemon. The channels that share one socket among
many requests are ``_channel`` (blocking) and ``_async_channel`` (asyncio);
``_endpoints`` shares requests out over several daemons' channels.

Rules kept here and by the channels:

- **Thread ownership.** ZeroMQ sockets are not thread-safe: one thread at a
  time per socket (see ``Channel`` for how threads take turns).
- **Fork.** A forked child must not use, close or terminate its parent's
  sockets or context (libzmq state is not fork-safe, and terminating it in the
  child can hang). Every object here remembers the pid that made it; the
  child makes fresh ones, and the parent's are parked in :data:`_inherited`,
  referenced forever, so their finalisers never run in the child.
- **No silent queueing.** ``IMMEDIATE=1`` makes a send fail while no
  connection exists, instead of queueing the request for a daemon that may
  return long after the caller gave up; ``LINGER=0`` on the socket. Closing
  uses a short :data:`CLOSE_LINGER_MS` instead, so that a ``cancel`` queued
  just before is not thrown away (``zmq_close`` still returns at once).
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

import os
import threading
from typing import Any, TypeVar, cast

import zmq

from ._curve import CurveKeys

SocketT = TypeVar("SocketT", bound=zmq.Socket)

#: Zmq objects a forked child inherited from its parent: kept referenced so
#: that they are never closed or terminated in the child.
_inherited: list[Any] = []

_context: zmq.Context | None = None
_context_pid = 0
_context_lock = threading.Lock()

#: How often a caller waiting for a reply checks that the daemon is still connected.
LIVENESS_CHECK_MS = 100

#: Linger when closing a socket: how long libzmq's I/O thread may still
#: deliver a ``cancel`` queued just before. Measured here (pyzmq 27, libzmq
#: 4.3.5, tcp loopback): with linger 0, 5 of 300 frames queued behind large
#: ones right before ``close()`` were lost; with 50 ms, none. ``close()``
#: returns at once either way; only terminating the context would wait.
CLOSE_LINGER_MS = 100


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


def open_dealer(context: zmq.Context[SocketT], endpoint: str,
                curve: CurveKeys | None = None) -> SocketT:
    """A DEALER connecting to ``endpoint`` (async if ``context`` is a ``zmq.asyncio.Context``),
    a CURVE client of the daemon when ``curve`` is given and the endpoint is tcp.

    No ``MAXMSGSIZE`` on this side: replies (embeddings) may legitimately be
    larger than requests, and libzmq would drop the connection without a word.
    A daemon that refuses the keys never completes the handshake, so the
    connection never comes up (the caller hears ``unavailable`` after its
    ``connect_timeout``).
    """
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    dealer.setsockopt(zmq.LINGER, 0)
    if curve is not None and endpoint.startswith("tcp://"):
        dealer.curve_serverkey = curve.server_public
        dealer.curve_publickey = curve.public
        dealer.curve_secretkey = curve.secret
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
        socket.close(linger=CLOSE_LINGER_MS)
    else:
        _inherited.append(socket)


def _after_fork_in_child() -> None:
    global _context_lock
    _context_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


