"""The ZAP handler (ZeroMQ RFC 27): libzmq asks it about every new connection.

The daemon's ROUTER sets a ZAP domain, so libzmq sends a request for each peer
that completes the handshake to ``inproc://zeromq.zap.01`` on the same context,
and serves the peer only when the answer is ``200``. The handler is a thread
of its own that owns the one socket bound there. Its policy:

- the NULL mechanism (no keys) is allowed where the endpoint has no CURVE
  (ipc, whose peers the kernel identifies by uid; tcp on loopback);
- CURVE: the client's public key must be in the authorized-clients file;
  the answer's User-Id is the key's name, which libzmq then attaches to every
  message of that connection (the frame property ``User-Id``);
- anything else is refused with ``400``: libzmq drops the peer before one
  of its messages is read.

The handler must be bound before the ROUTER binds and must outlive it:
libzmq 4.3 treats a missing handler as *no* authentication (any CURVE key
is served). So :meth:`ZapHandler.stop` runs after the ROUTER is closed, and
if the thread fails its socket stays bound, unanswered: new connections
wait (never let in) until the daemon, which sees the thread dead, exits.
A malformed request is answered ``400`` (or dropped when it has no
envelope); nothing a request holds can end the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import zmq
from zmq.utils import z85

from ollamad.curvekeys import AuthorizedClients
from ollamad.serving.router import ZAP_DOMAIN

log = logging.getLogger("ollamad.zap")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
#: How long the thread waits in poll before it looks at its stop flag.
POLL_MS = 100
#: Seconds start() waits for the thread to bind.
BIND_TIMEOUT = 5.0


@dataclass(frozen=True)
class Verdict:
    status: bytes           # b"200" or b"400"
    text: str               # the status text, for the peer
    user_id: str = ""
    #: Why a peer was refused, for the operator's log.
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == b"200"


@dataclass(frozen=True)
class ZapPolicy:
    """Who may connect (see the module docstring); a reload swaps in a new one."""

    null_allowed: bool
    clients: AuthorizedClients = AuthorizedClients()

    def decide(self, domain: bytes, mechanism: bytes, credentials: list[bytes]) -> Verdict:
        if domain != ZAP_DOMAIN.encode():
            return _refused(f"unknown ZAP domain {domain[:40]!r}")
        if mechanism == b"NULL":
            if self.null_allowed:
                return Verdict(b"200", "OK")
            return _refused("it has no CURVE keys, and this endpoint needs them")
        if mechanism == b"CURVE":
            key = credentials[0] if len(credentials) == 1 else b""
            name = self.clients.name_of(key) if len(key) == 32 else None
            if name is None:
                shown = z85.encode(key).decode() if len(key) == 32 else "?"
                return _refused(f"its CURVE key {shown} is not in authorized_clients "
                                "(`ollamad keygen --client NAME` makes a key and prints its line)")
            return Verdict(b"200", "OK", name)
        return _refused(f"mechanism {mechanism[:20]!r} is not served")


def _refused(reason: str) -> Verdict:
    return Verdict(b"400", "refused", reason=reason)


class RefusalLog:
    """One log line per peer and reason an interval, and at most ``burst`` lines an interval.

    A refused client reconnects every 100 ms (libzmq's default) until it
    gives up: it must not fill the journal.
    """

    def __init__(self, interval: float = 60.0, burst: int = 20,
                 clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._window_start = -interval
        self._lines = 0
        self._suppressed = 0

    def refused(self, peer: str, reason: str) -> None:
        now = self._clock()
        if now - self._window_start >= self.interval:
            if self._suppressed:
                log.warning("%d more refused connections were not logged", self._suppressed)
            self._window_start, self._lines, self._suppressed = now, 0, 0
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        seen = self._last.get((peer, reason))
        if (seen is not None and now - seen < self.interval) or self._lines >= self.burst:
            self._suppressed += 1
            return
        self._last[(peer, reason)] = now
        self._lines += 1
        log.warning("refused a connection from %s: %s", peer, reason)


def handshake_failure(code: int) -> str:
    """Why a peer's ZeroMQ handshake failed (a monitor's protocol error code), in words."""
    if code == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return ("its security mechanism is not this endpoint's: a client without CURVE keys "
                "on a CURVE endpoint, or one with keys on an endpoint without")
    if code == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "its CURVE handshake failed: a client with another server's public key?"
    return f"its ZeroMQ handshake failed (protocol error {code:#x})"


class ZapHandler:
    """The thread that answers libzmq's ZAP requests on ``context``."""

    def __init__(self, context: zmq.Context, policy: ZapPolicy, *,
                 on_refusal: Callable[[], None] = lambda: None):
        self.policy = policy
        self._context = context
        self._on_refusal = on_refusal
        self._refusals = RefusalLog()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._bind_error: Exception | None = None
        self._socket: zmq.Socket | None = None
        self._thread = threading.Thread(target=self._run, name="zap-handler", daemon=True)

    def start(self) -> None:
        """Start the thread; returns once its socket is bound (raises if it cannot be)."""
        self._thread.start()
        if not self._bound.wait(BIND_TIMEOUT):
            raise RuntimeError(f"the ZAP handler did not bind {ZAP_ENDPOINT} in "
                               f"{BIND_TIMEOUT:g} s")
        if self._bind_error is not None:
            raise RuntimeError(f"cannot bind the ZAP handler: {self._bind_error}")

    def alive(self) -> bool:
        return self._thread.ident is None or self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """End the thread (after the ROUTER is closed) and close its socket."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the ZAP handler did not stop within %g s", timeout)
        elif self._socket is not None:   # the thread died: its socket is nobody's now
            self._socket.close(linger=0)
            self._socket = None

    def _run(self) -> None:
        try:
            sock = self._context.socket(zmq.ROUTER)
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._bind_error = exc
            self._bound.set()
            return
        self._socket = sock
        self._bound.set()
        while not self._stop.is_set():
            if not sock.poll(POLL_MS):
                continue
            while not self._stop.is_set():
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                reply = self.answer(frames)
                if reply is not None:
                    try:
                        sock.send_multipart(reply, zmq.NOBLOCK)
                    except zmq.ZMQError:   # the asking connection is gone
                        pass
        sock.close(linger=0)
        self._socket = None

    def answer(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply to one request (with its envelope), or None for one without an envelope."""
        try:
            delimiter = frames.index(b"")
        except ValueError:
            return None
        envelope, request = frames[:delimiter + 1], frames[delimiter + 1:]
        request_id = request[1] if len(request) > 1 else b""
        if len(request) < 6 or request[0] != ZAP_VERSION:
            verdict = _refused("a malformed ZAP request")
            address = ""
        else:
            domain, address_bytes, _identity, mechanism = request[2:6]
            address = address_bytes.decode("utf-8", "replace")
            verdict = self.policy.decide(domain, mechanism, request[6:])
        if not verdict.allowed:
            self._on_refusal()
            self._refusals.refused(address or "an ipc peer", verdict.reason)
        return [*envelope, ZAP_VERSION, request_id, verdict.status, verdict.text.encode(),
                verdict.user_id.encode(), b""]
