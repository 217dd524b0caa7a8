"""sd_notify over a real unix datagram socket bound by the test."""

from __future__ import annotations

import enum
import logging
import os
import socket
import time
import uuid

import pytest

from ollamad.notify import Notifier, child_environment, format_status, socket_address

RECEIVE_DEADLINE_S = 5.0


class Receiver:
    """The systemd side: a bound datagram socket and the NOTIFY_SOCKET value naming it."""

    def __init__(self, notify_socket: str) -> None:
        self.notify_socket = notify_socket
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(socket_address(notify_socket))

    def fields(self) -> dict[str, str]:
        """The next datagram's fields, waiting at most RECEIVE_DEADLINE_S."""
        self.socket.settimeout(RECEIVE_DEADLINE_S)
        lines = self.socket.recv(4096).decode().split("\n")
        return dict(line.split("=", 1) for line in lines)

    def assert_empty(self) -> None:
        # A unix datagram is queued by the time sendto() returns: no waiting needed.
        self.socket.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.socket.recv(4096)

    def close(self) -> None:
        self.socket.close()
        if not self.notify_socket.startswith("@"):
            os.unlink(self.notify_socket)


@pytest.fixture(params=["abstract", "path"])
def receiver(request, tmp_path):
    if request.param == "abstract":
        receiver = Receiver(f"@ollamad-test-{uuid.uuid4().hex}")
    else:
        receiver = Receiver(str(tmp_path / "notify.sock"))
    yield receiver
    receiver.socket.close()


def notifier_for(receiver: Receiver, **env: str) -> Notifier:
    return Notifier.from_environment({"NOTIFY_SOCKET": receiver.notify_socket, **env})


def test_lifecycle_messages(receiver):
    notifier = notifier_for(receiver)
    assert notifier.enabled
    assert notifier.ready()
    assert receiver.fields() == {"READY": "1"}
    assert notifier.status("RUNNING: ollama pid 1")
    assert receiver.fields() == {"STATUS": "RUNNING: ollama pid 1"}
    assert notifier.stopping()
    assert receiver.fields() == {"STOPPING": "1"}
    receiver.assert_empty()
    notifier.close()


def test_status_stays_one_field(receiver):
    notifier = notifier_for(receiver)
    notifier.status("two\nlines")
    assert receiver.fields() == {"STATUS": "two lines"}


def test_reload_sends_monotonic_time_then_ready(receiver):
    notifier = notifier_for(receiver)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.ready()
    reloading = receiver.fields()
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    assert receiver.fields() == {"READY": "1"}


def test_watchdog_pings_once_per_half_interval(receiver):
    notifier = notifier_for(receiver, WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
    assert notifier.watchdog_interval == 1.0
    sent = [notifier.maybe_ping(now) for now in (100.0, 100.5, 100.99, 101.0, 101.2, 102.5)]
    assert sent == [True, False, False, True, False, True]
    for _ in range(3):
        assert receiver.fields() == {"WATCHDOG": "1"}
    receiver.assert_empty()


def test_watchdog_without_watchdog_pid_is_ours(receiver):
    assert notifier_for(receiver, WATCHDOG_USEC="30000000").watchdog_interval == 15.0


def test_watchdog_for_another_pid_is_ignored(receiver):
    notifier = notifier_for(receiver, WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid() + 1))
    assert notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.maybe_ping(100.0)
    receiver.assert_empty()


@pytest.mark.parametrize("value", ["", "0", "soon"])
def test_no_watchdog_without_a_positive_period(receiver, value):
    assert notifier_for(receiver, WATCHDOG_USEC=value).watchdog_interval is None


def test_no_op_without_notify_socket():
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not any([notifier.ready(), notifier.status("x"), notifier.stopping(),
                    notifier.reloading(), notifier.watchdog(), notifier.maybe_ping(1.0)])
    notifier.close()


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234", "@"])
def test_unusable_notify_socket_disables(value, caplog):
    assert not Notifier.from_environment({"NOTIFY_SOCKET": value}).enabled
    assert "notifications disabled" in caplog.text


def test_send_errors_are_logged_once_and_never_raised(tmp_path, caplog):
    receiver = Receiver(str(tmp_path / "notify.sock"))
    notifier = notifier_for(receiver)
    assert notifier.ready()
    receiver.close()  # systemd went away
    with caplog.at_level(logging.INFO, logger="ollamad.notify"):
        assert not notifier.status("a")
        assert not notifier.watchdog()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "STATUS=a" in warnings[0].getMessage()

        receiver = Receiver(str(tmp_path / "notify.sock"))
        assert notifier.ready()
        assert receiver.fields() == {"READY": "1"}
        assert "work again" in caplog.text
    receiver.close()


def test_child_environment_scrubs_service_variables():
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "LISTEN_FDS": "1",
           "LISTEN_PID": "2", "LISTEN_FDNAMES": "a", "PATH": "/usr/bin", "OLLAMA_MODELS": "/m"}
    assert child_environment(env) == {"PATH": "/usr/bin", "OLLAMA_MODELS": "/m"}
    assert "NOTIFY_SOCKET" in env  # the daemon's own environment is left alone


def test_format_status():
    gib = 1024 ** 3
    assert (format_status("RUNNING", 123, 8, 2, int(5.1 * gib), 8 * gib)
            == "RUNNING: ollama pid 123, 8 workers, 2 in flight, GPU 5.1/8.0 GiB")
    assert format_status("BACKOFF", None, 1, 0) == "BACKOFF: ollama not running, 1 worker, 0 in flight"
    assert format_status("RUNNING", 5, 8, 0, None, 8 * gib) == "RUNNING: ollama pid 5, 8 workers, 0 in flight"


def test_format_status_uses_enum_names():
    State = enum.Enum("State", "RUNNING")
    assert format_status(State.RUNNING, 7, 2, 1).startswith("RUNNING: ")
