"""Socket activation: which passed descriptor a tcp endpoint takes."""

from __future__ import annotations

import os
import socket

import pytest

from ollamad.serving.activation import LISTEN_FDS_START, listener_for, passed_descriptors


@pytest.fixture
def listeners():
    made = []

    def make(family=socket.AF_INET, host="127.0.0.1", listen=True):
        sock = socket.socket(family, socket.SOCK_STREAM)
        made.append(sock)
        sock.bind((host, 0))
        if listen:
            sock.listen()
        return sock

    yield make
    for sock in made:
        sock.close()


def test_descriptors_are_only_those_passed_to_this_process():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"}
    assert passed_descriptors(env, os.getpid()) == [LISTEN_FDS_START, LISTEN_FDS_START + 1]
    assert passed_descriptors({**env, "LISTEN_PID": "1"}, os.getpid()) == []   # a parent's
    assert passed_descriptors({**env, "LISTEN_FDS": "x"}, os.getpid()) == []
    assert passed_descriptors({}, os.getpid()) == []


def test_the_endpoint_takes_the_listener_on_its_address_and_port(listeners):
    v4 = listeners()
    v6 = listeners(socket.AF_INET6, "::1")
    not_listening = listeners(listen=False)
    port4, port6 = v4.getsockname()[1], v6.getsockname()[1]
    fds = [not_listening.fileno(), v6.fileno(), v4.fileno()]
    assert listener_for(f"tcp://127.0.0.1:{port4}", fds) == v4.fileno()
    assert listener_for(f"tcp://*:{port4}", fds) == v4.fileno()
    assert listener_for(f"tcp://[::1]:{port6}", fds) == v6.fileno()
    assert listener_for(f"tcp://[::]:{port6}", fds) == v6.fileno()
    assert listener_for(f"tcp://10.0.0.1:{port4}", fds) is None           # another address
    assert listener_for(f"tcp://127.0.0.1:{port6}", fds) is None          # another family
    assert listener_for(f"tcp://127.0.0.1:{not_listening.getsockname()[1]}", fds) is None
    assert listener_for("ipc:///run/ollamad/ollamad.sock", fds) is None
    # Looking did not close any of them.
    for sock in (v4, v6, not_listening):
        assert sock.fileno() >= 0 and sock.getsockname()


def test_descriptors_that_are_no_sockets_are_passed_over(tmp_path, listeners):
    v4 = listeners()
    with open(tmp_path / "file", "w") as file:
        assert listener_for(f"tcp://127.0.0.1:{v4.getsockname()[1]}",
                            [file.fileno(), 999, v4.fileno()]) == v4.fileno()
