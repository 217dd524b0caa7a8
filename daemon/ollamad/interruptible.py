"""HTTP connections to Ollama that another thread can cut at once.

``requests`` hides the socket of a call in progress, both while it waits for
the response headers (Ollama sends them only after a model load, a wait for
a slot and the prompt's prefill) and while it reads a streamed body. This is
the one seam that exposes it: the connection pool records, per thread, the
connection it hands out, and :meth:`ConnectionSlot.interrupt` shuts that
connection's socket down from any thread. The blocked read then fails at
once, urllib3 discards the connection, and Ollama sees its client leave.
"""

from __future__ import annotations

import socket
import threading

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_slots = threading.local()


class ConnectionSlot:
    """The connection one worker thread is using right now."""

    def __init__(self) -> None:
        self.connection = None

    def set_read_timeout(self, seconds: float) -> None:
        """From now on, each read of the call in progress may wait ``seconds`` (a streamed
        answer's pace once it has begun; urllib3 sets the timeout only when it sends)."""
        sock = getattr(self.connection, "sock", None)
        if sock is not None:
            try:
                sock.settimeout(seconds)
            except OSError:
                pass  # closed under us: the read fails on its own

    def interrupt(self) -> None:
        connection = self.connection
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: nothing is blocked on it


def current_slot() -> ConnectionSlot:
    """This thread's slot (made on first use)."""
    slot = getattr(_slots, "slot", None)
    if slot is None:
        slot = _slots.slot = ConnectionSlot()
    return slot


class _Tracking:
    def _get_conn(self, timeout=None):  # urllib3's hook: a connection is handed out
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        current_slot().connection = connection
        return connection


class _TrackingHTTPPool(_Tracking, HTTPConnectionPool):
    pass


class _TrackingHTTPSPool(_Tracking, HTTPSConnectionPool):
    pass


class _InterruptibleAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackingHTTPPool,
                                                   "https": _TrackingHTTPSPool}


def session() -> requests.Session:
    """A session for calls to a local Ollama: interruptible, and deaf to proxy variables."""
    made = requests.Session()
    made.trust_env = False  # an http_proxy meant for the internet must not reroute local calls
    adapter = _InterruptibleAdapter()
    made.mount("http://", adapter)
    made.mount("https://", adapter)
    return made
