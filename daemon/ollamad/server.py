"""The ZeroMQ side: binding the ROUTER socket safely, reading frames, sending replies.

Only the I/O thread calls into :class:`RouterSocket`. Other threads hand
replies over through :class:`Outbox`, which queues them and wakes the I/O
thread through a pipe; the same pipe carries signal numbers
(``signal.set_wakeup_fd``), so signals become ordinary events on the loop.

libzmq facts this code works around (DESIGN.md): it never sets an ipc
socket file's mode, a second ``bind()`` to the same path silently steals it,
and ``MAXMSGSIZE`` disconnects an oversized sender without a word.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import logging
import os
from dataclasses import dataclass

import zmq

log = logging.getLogger(__name__)

#: How many queued messages a peer may have before the daemon drops replies
#: to it rather than block the I/O thread.
HIGH_WATER_MARK = 10_000


class SocketInUse(RuntimeError):
    """Another live daemon serves this endpoint."""


@dataclass(frozen=True)
class Peer:
    """Who sent a message: uid/gid/pid on ipc, unknown (None) on tcp."""

    uid: int | None
    gid: int | None
    pid: int | None

    @classmethod
    def from_address(cls, address: str | None) -> "Peer":
        # On ipc libzmq reports "localhost:UID:GID:PID" (SO_PEERCRED).
        parts = (address or "").split(":")
        if len(parts) == 4 and parts[0] == "localhost":
            try:
                return cls(int(parts[1]), int(parts[2]), int(parts[3]))
            except ValueError:
                pass
        return cls(None, None, None)


@dataclass(frozen=True)
class Incoming:
    route: tuple[bytes, ...]    # identity (and the empty delimiter of a REQ peer)
    body: bytes | None          # None: the frames had no usable shape
    peer_address: str | None


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


class RouterSocket:
    """The daemon's ROUTER socket, bound with a lock file and a fixed mode."""

    def __init__(self, context: zmq.Context, endpoint: str, max_message_bytes: int,
                 socket_mode: int):
        self.endpoint = endpoint
        self._path = ipc_path(endpoint)
        self._lock_fd: int | None = None
        if self._path:
            self._take_lock()
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        self.socket.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        self.socket.setsockopt(zmq.LINGER, 0)
        # The file appears with mode 0777 & ~umask: narrow the umask around
        # bind() so it is never briefly world-connectable, then set the mode.
        old_umask = os.umask(0o777 & ~socket_mode) if self._path else None
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise SocketInUse(f"cannot bind {endpoint}: {exc}") from None
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if self._path:
            os.chmod(self._path, socket_mode)
        self.bound = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _take_lock(self) -> None:
        assert self._path is not None
        directory = os.path.dirname(self._path) or "."
        if not os.path.isdir(directory):
            raise SocketInUse(f"cannot bind ipc://{self._path}: directory {directory} does not exist")
        lock_path = self._path + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise SocketInUse(
                    f"another ollamad (pid {holder}) is already serving ipc://{self._path}; "
                    "stop it first or choose another --socket") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        # We hold the lock, so a socket file still there is a dead daemon's.
        if os.path.exists(self._path):
            log.warning("taking over stale socket %s", self._path)
            os.unlink(self._path)

    def receive(self) -> Incoming | None:
        """One message, or None when nothing is waiting."""
        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        identity = frames[0].bytes
        if len(frames) == 2:                                   # DEALER
            route: tuple[bytes, ...] = (identity,)
        elif len(frames) == 3 and len(frames[1].bytes) == 0:   # REQ: keep the delimiter
            route = (identity, b"")
        else:
            return Incoming((identity,), None, None)
        body = frames[-1]
        return Incoming(route, body.bytes, body.get("Peer-Address"))

    def send(self, route: tuple[bytes, ...], payload: bytes) -> bool:
        """Send without blocking; False when the peer is gone or too far behind."""
        try:
            self.socket.send_multipart([*route, payload], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise

    def close(self) -> None:
        if getattr(self, "socket", None) is not None and not self.socket.closed:
            self.socket.close(linger=0)
        if self._lock_fd is not None:
            if self._path and os.path.exists(self._path):
                os.unlink(self._path)
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


class Outbox:
    """Replies from any thread to the I/O thread, plus the wake-up pipe."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._queue: collections.deque[tuple[tuple[bytes, ...], bytes]] = collections.deque()

    @property
    def write_fd(self) -> int:
        return self._write_fd

    def put(self, route: tuple[bytes, ...], payload: bytes) -> None:
        self._queue.append((route, payload))
        self.wake()

    def wake(self) -> None:
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already: the I/O thread will look

    def take_signals(self) -> list[int]:
        """Empty the pipe; returns the signal numbers it carried, in order."""
        signals: list[int] = []
        while True:
            try:
                data = os.read(self.read_fd, 4096)
            except BlockingIOError:
                return signals
            if not data:
                return signals
            signals.extend(b for b in data if b)

    def pop_all(self) -> list[tuple[tuple[bytes, ...], bytes]]:
        items = []
        while self._queue:
            items.append(self._queue.popleft())
        return items

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self._write_fd)
