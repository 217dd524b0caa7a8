"""systemd readiness, status and watchdog notifications (sd_notify(3)) in pure Python.

The daemon runs as a `Type=notify` service. systemd passes it a datagram
socket in `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) and,
with `WatchdogSec=`, the watchdog period in `WATCHDOG_USEC`. Each notification
is one datagram of newline-separated `KEY=VALUE` fields.

Sending never raises into the daemon: a failed send is logged (once per run of
failures) and reported as `False`. Without `NOTIFY_SOCKET` every method is a
no-op, so the same code runs under systemd, in a terminal and in tests.

The watchdog is fed only from the I/O loop (`maybe_ping` every iteration): if
that loop wedges the pings stop and systemd kills and restarts the service.
Pinging from a helper thread would keep a dead daemon alive. The loop's poll
timeout must therefore stay below `watchdog_interval`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Mapping

log = logging.getLogger(__name__)

#: Variables systemd sets for the service itself. `ollama serve` must not
#: inherit them: with NotifyAccess=main its notifications would be refused,
#: and LISTEN_* would make it look for sockets that are not its own.
SERVICE_ONLY_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)

#: How long a send may block when systemd's receive queue is full. A dropped
#: READY=1 would fail the start, a long stall would stall the I/O loop.
SEND_TIMEOUT_S = 1.0

_GIB = 1024 ** 3


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` without the variables meant for this service only."""
    return {key: value for key, value in env.items() if key not in SERVICE_ONLY_VARIABLES}


def socket_address(notify_socket: str) -> str | None:
    """The `sendto` address for a `NOTIFY_SOCKET` value, or None if unusable.

    `@name` is a Linux abstract socket (leading NUL byte); anything else must
    be an absolute path. Other forms (such as `vsock:`) are not supported.
    """
    if notify_socket.startswith("@") and len(notify_socket) > 1:
        return "\0" + notify_socket[1:]
    if notify_socket.startswith("/"):
        return notify_socket
    return None


def format_status(state: object, pid: int | None, workers: int, in_flight: int,
                  gpu_used_bytes: int | None = None,
                  gpu_total_bytes: int | None = None) -> str:
    """One STATUS= line, e.g. `RUNNING: ollama pid 123, 8 workers, 2 in flight, GPU 5.1/8.0 GiB`.

    `state` may be an enum (its name is used) or a string. The GPU part is
    left out when either figure is unknown.
    """
    state_name = getattr(state, "name", state)
    ollama = f"ollama pid {pid}" if pid is not None else "ollama not running"
    worker_noun = "worker" if workers == 1 else "workers"
    text = f"{state_name}: {ollama}, {workers} {worker_noun}, {in_flight} in flight"
    if gpu_used_bytes is not None and gpu_total_bytes is not None:
        text += f", GPU {gpu_used_bytes / _GIB:.1f}/{gpu_total_bytes / _GIB:.1f} GiB"
    return text


class Notifier:
    """Sends sd_notify messages to one address; thread-safe.

    Build it with `from_environment()`. `address` None makes every method a
    no-op; `watchdog_usec` None means systemd expects no watchdog pings.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_interval = (
            watchdog_usec / 2 / 1_000_000 if address and watchdog_usec else None)
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._failing = False
        self._last_ping: float | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ,
                         pid: int | None = None) -> "Notifier":
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

        The watchdog applies only when WATCHDOG_PID is absent or equals our
        pid (`pid`, default `os.getpid()`): a value for another process means
        the variables were inherited, not meant for us.
        """
        raw_socket = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw_socket) if raw_socket else None
        if raw_socket and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name; "
                        "systemd notifications disabled", raw_socket)
        return cls(address, _watchdog_usec(env, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), None without a watchdog."""
        return self._watchdog_interval

    def ready(self) -> bool:
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        # A newline would start a new field: keep the status one line.
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """Announce a config reload; send `ready()` once it is done."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def maybe_ping(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 if a half-interval has passed since the last ping.

        Call it on every I/O loop iteration with `time.monotonic()` (the
        default). Returns whether a ping was sent.
        """
        if self._watchdog_interval is None:
            return False
        now = time.monotonic() if now is None else now
        if self._last_ping is not None and now - self._last_ping < self._watchdog_interval:
            return False
        self._last_ping = now
        return self.watchdog()

    def send(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields as one datagram. True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._socket.settimeout(SEND_TIMEOUT_S)
                self._socket.sendto(message, self._address)
            except OSError as error:
                if not self._failing:
                    log.warning("systemd notification %r failed: %s", fields[0], error)
                self._failing = True
                return False
            if self._failing:
                log.info("systemd notifications work again")
                self._failing = False
            return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _watchdog_usec(env: Mapping[str, str], pid: int) -> int | None:
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
