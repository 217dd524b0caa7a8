"""The ZeroMQ side: binding the ROUTER socket safely, reading frames, sending replies.

Only the I/O thread calls into :class:`RouterSocket`.

libzmq facts this code works around (DESIGN.md): it never sets an ipc
socket file's mode, a second ``bind()`` to the same path silently steals it,
``MAXMSGSIZE`` disconnects an oversized sender without a word, a ROUTER never
says that a peer left (its socket monitor does, by file descriptor, and each
message says which descriptor it came from: ``ZMQ_SRCFD``), messages from
ZMTP/1.0 peers carry no ``Peer-Address`` (with a ZAP domain set libzmq refuses
them), a CURVE endpoint without a ZAP handler serves any key (the handler,
:mod:`.zap`, is bound before this socket), and its listener *aborts the
process* when ``accept()`` fails with ``EMFILE``, so the daemon must keep
descriptors in hand: it shuts down connections past its limit at once
(:meth:`RouterSocket.refuse`; ``zmq_unbind`` is no way to stop accepting, as
it also drops the connections already made).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import grp
import logging
import os
import socket
from dataclasses import dataclass
from typing import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from ollamad.configspec import ConfigError

log = logging.getLogger(__name__)

#: Replies a connection may have queued in libzmq before the daemon keeps
#: the rest in its own backlog (:mod:`.outbox`).
SEND_HIGH_WATER_MARK = 1000
#: Requests a connection may have buffered in libzmq, unread: with 4 MiB
#: messages that is at most 128 MiB per connection while the loop is busy.
RECEIVE_HIGH_WATER_MARK = 32
#: The ZAP domain: with one set, libzmq asks the ZAP handler about every
#: peer, and refuses ZMTP/1.0 peers, which cannot be asked.
ZAP_DOMAIN = "ollamad"


class BindError(RuntimeError):
    """The endpoint cannot be served (taken by another daemon, or not writable)."""


class SendResult(enum.Enum):
    SENT = "sent"
    FULL = "full"        # the peer's queue is at its high-water mark: try later
    GONE = "gone"        # no such peer (it disconnected)


@dataclass(frozen=True)
class Peer:
    """Who sent a message: uid/gid/pid on ipc; on tcp no uid, and with CURVE the name
    of the client's key (what the ZAP handler answered as its User-Id)."""

    uid: int | None
    gid: int | None
    pid: int | None
    key: str | None = None

    @classmethod
    def from_address(cls, address: str | None, user_id: str | None = None) -> "Peer":
        # On ipc libzmq reports "localhost:UID:GID:PID" (SO_PEERCRED).
        parts = (address or "").split(":")
        if len(parts) == 4 and parts[0] == "localhost":
            try:
                return cls(int(parts[1]), int(parts[2]), int(parts[3]))
            except ValueError:
                pass
        # A key name is an identity only where no uid is: never one next to a uid.
        return cls(None, None, None, user_id or None)


@dataclass(frozen=True)
class Incoming:
    route: tuple[bytes, ...]    # identity (and the empty delimiter of a REQ peer)
    body: bytes | None          # None: the frames had no usable shape
    peer_address: str | None
    #: The connection's file descriptor in libzmq (None if unknown).
    connection: int | None = None
    #: What the ZAP handler named the peer (a CURVE key's name), else None.
    user_id: str | None = None


@dataclass(frozen=True)
class ConnectionEvent:
    """A connection opened (``accepted``) or closed, by its descriptor."""

    accepted: bool
    fd: int


def socket_group_id(name: str) -> int | None:
    """The gid ``socket_group`` names (None: keep the daemon's own group).

    Raises ``ConfigError`` when the group does not exist or this process may
    not give a file to it (only root and the group's members may).
    """
    if not name:
        return None
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"socket_group: there is no group {name!r} (the shipped "
                          "sysusers.d file creates ollamad-clients: `ollamad "
                          "install-systemd`)") from None
    if os.geteuid() != 0 and gid not in (os.getegid(), *os.getgroups()):
        raise ConfigError(f"socket_group: this process (uid {os.geteuid()}) is not a member of "
                          f"group {name!r}, so it cannot give the socket to it (the unit's "
                          "SupplementaryGroups= must name it)")
    return gid


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


def _frame_property(frame: zmq.Frame, name: str | int) -> object:
    try:
        return frame.get(name)
    except (zmq.ZMQError, ValueError, OSError):  # EINVAL: the peer gave none
        return None


class RouterSocket:
    """The daemon's ROUTER socket, bound with a lock file and a fixed mode."""

    def __init__(self, context: zmq.Context, endpoint: str, max_message_bytes: int,
                 socket_mode: int, zap: bool = True, *, socket_gid: int | None = None,
                 listener_fd: int | None = None, curve_secret_key: bytes | None = None,
                 on_handshake_failure: Callable[[int], None] = lambda code: None):
        self.endpoint = endpoint
        self._path = ipc_path(endpoint)
        self._socket_mode = socket_mode
        self._socket_gid = socket_gid
        #: A listening socket systemd passed for this endpoint (:mod:`.activation`).
        self._listener_fd = listener_fd
        self._lock_fd: int | None = None
        self.monitor: zmq.Socket | None = None
        if self._path:
            self._take_lock()
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.socket.setsockopt(zmq.SNDHWM, SEND_HIGH_WATER_MARK)
        self.socket.setsockopt(zmq.RCVHWM, RECEIVE_HIGH_WATER_MARK)
        self.socket.setsockopt(zmq.LINGER, 0)
        if zap:
            self.socket.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        if curve_secret_key is not None:
            self.socket.curve_server = True
            self.socket.curve_secretkey = curve_secret_key
        self._on_handshake_failure = on_handshake_failure
        self.monitor = self.socket.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        self.bound = self._bind(endpoint)

    def _bind(self, endpoint: str) -> str:
        # The file appears with mode 0777 & ~umask: narrow the umask around
        # bind() so it is never briefly world-connectable, then set the mode.
        old_umask = os.umask(0o777 & ~self._socket_mode) if self._path else None
        if self._listener_fd is not None:
            self.socket.setsockopt(zmq.USE_FD, self._listener_fd)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise BindError(f"cannot bind {endpoint}: {exc}") from None
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if self._path:
            if self._socket_gid is not None:
                os.chown(self._path, -1, self._socket_gid)   # checked by socket_group_id()
            os.chmod(self._path, self._socket_mode)
        return self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _take_lock(self) -> None:
        assert self._path is not None
        directory = os.path.dirname(self._path) or "."
        if not os.path.isdir(directory):
            raise BindError(
                f"cannot bind ipc://{self._path}: directory {directory} does not exist. Under "
                f"systemd the unit creates it (RuntimeDirectory=ollamad; `ollamad "
                f"install-systemd`); by hand: `sudo install -d -m 0750 -o $USER {directory}`, "
                f"or serve elsewhere: --socket ipc:///tmp/ollamad.sock")
        lock_path = self._path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise BindError(f"cannot bind ipc://{self._path}: cannot create {lock_path}: "
                            f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise BindError(
                    f"another ollamad (pid {holder}) is already serving ipc://{self._path}; "
                    "stop it first or choose another --socket") from None
            raise BindError(f"cannot lock {lock_path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        # We hold the lock, so a socket file still there is a dead daemon's.
        if os.path.exists(self._path):
            log.warning("taking over stale socket %s", self._path)
            os.unlink(self._path)

    def refuse(self, fd: int) -> None:
        """Shut connection ``fd`` down; libzmq then closes it (and reports it closed)."""
        try:
            conn = socket.socket(fileno=fd)
        except OSError:
            return
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            conn.detach()   # the descriptor stays libzmq's to close

    # -- messages --------------------------------------------------------------

    def receive(self) -> Incoming | None:
        """One message, or None when nothing is waiting."""
        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        identity = frames[0].bytes
        body = frames[-1]
        fd = _frame_property(body, zmq.SRCFD)
        connection = fd if isinstance(fd, int) and fd >= 0 else None
        if len(frames) == 2:                                   # DEALER
            route: tuple[bytes, ...] = (identity,)
        elif len(frames) == 3 and len(frames[1].bytes) == 0:   # REQ: keep the delimiter
            route = (identity, b"")
        else:
            return Incoming((identity,), None, None, connection)
        address = _frame_property(body, "Peer-Address")
        user_id = _frame_property(body, "User-Id")
        return Incoming(route, body.bytes, address if isinstance(address, str) else None,
                        connection, user_id if isinstance(user_id, str) and user_id else None)

    def connection_events(self) -> list[ConnectionEvent]:
        """Connections opened and closed since the last call, in order."""
        events = []
        while self.monitor is not None and self.monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                message = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if message["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                # A peer whose mechanism is not ours (no CURVE keys, or the wrong
                # server key); its close follows as a disconnect.
                self._on_handshake_failure(int(message["value"]))
                continue
            events.append(ConnectionEvent(message["event"] == zmq.EVENT_ACCEPTED,
                                          int(message["value"])))
        return events

    def send(self, route: tuple[bytes, ...], payload: bytes) -> SendResult:
        """Send without blocking."""
        try:
            self.socket.send_multipart([*route, payload], zmq.NOBLOCK)
            return SendResult.SENT
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EAGAIN:
                return SendResult.FULL
            if exc.errno == zmq.EHOSTUNREACH:
                return SendResult.GONE
            raise

    def close(self) -> None:
        if self.monitor is not None:
            # Stop the monitor before closing its reader: libzmq sends events
            # with a blocking send from its I/O thread.
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
            self.monitor = None
        if getattr(self, "socket", None) is not None and not self.socket.closed:
            self.socket.close(linger=0)
        if self._lock_fd is not None:
            if self._path and os.path.exists(self._path):
                os.unlink(self._path)
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
