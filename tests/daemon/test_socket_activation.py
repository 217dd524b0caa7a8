"""A tcp endpoint under PrivateNetwork=yes: the daemon serves on the listening socket systemd
passed (``ollamad.socket``), made in the host's network, from a network namespace of its own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
    reason="needs root, unshare and ip to give the daemon a network namespace of its own")


def passing(listener: socket.socket, namespace: bool):
    """A launcher that does what systemd does for ollamad.socket: the listening socket as
    fd 3 with LISTEN_FDS/LISTEN_PID for the daemon's own pid; with ``namespace``, also
    what PrivateNetwork=yes does (a network namespace with its own loopback up)."""
    fd = listener.fileno()
    become_daemon = ("import os, sys\n"
                     f"os.dup2({fd}, 3)\nos.close({fd})\n"
                     "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
                     "os.execv(sys.executable, [sys.executable, '-m', 'ollamad', 'serve'])\n")
    argv = [sys.executable, "-c", become_daemon]
    if namespace:
        argv = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]

    def launch(daemon):
        with open(daemon.log_path, "ab") as log:
            process = daemon.reaper.spawn(argv, env=daemon.env, stdout=log,
                                          stderr=subprocess.STDOUT, pass_fds=(fd,))
        listener.close()     # only the daemon holds it now
        return process
    return launch


def test_the_daemon_serves_the_passed_socket_from_a_private_network(daemon_factory):
    listener = socket.create_server(("127.0.0.1", 0))     # in the host's namespace
    port = listener.getsockname()[1]
    daemon = daemon_factory({"socket": f"tcp://127.0.0.1:{port}"},
                            launch=passing(listener, namespace=True))
    status = daemon.wait_ready()
    assert f"serving tcp://127.0.0.1:{port} on the listening socket systemd passed (fd 3)" \
        in daemon.log()
    daemon_net = os.readlink(f"/proc/{daemon.process.pid}/ns/net")
    assert daemon_net != os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{status['ollama']['pid']}/ns/net") == daemon_net
    with daemon.client() as client:
        assert client.generate("hi")["text"]
    # Its Ollama listens in the daemon's namespace only.
    ollama_port = int(status["ollama"]["url"].rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ollama_port), timeout=2).close()
    assert daemon.stop() == 0


def test_a_passed_socket_elsewhere_is_named_and_the_endpoint_bound_as_usual(daemon_factory):
    other = socket.create_server(("127.0.0.1", 0))
    daemon = daemon_factory({"socket": "tcp://127.0.0.1:0"}, ready=False,
                            launch=passing(other, namespace=False))
    endpoint = daemon.wait_bound()
    assert "systemd passed 1 socket(s), none listening at tcp://127.0.0.1:0" in daemon.log()
    assert endpoint.startswith("tcp://127.0.0.1:")
    daemon.wait_ready()
    assert daemon.stop() == 0
