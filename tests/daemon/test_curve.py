"""tcp with CURVE: the real daemon's ZAP handler, authorized clients, key names as tenants,
and its refusal to serve tcp unsafely."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import zmq

from ollamad.keygen import make_pair, read_public
from ollamad_client import Client, OllamadError, Unavailable

from .test_prometheus import metrics_url, samples

KEY_ENV = ("OLLAMAD_SERVER_KEY", "OLLAMAD_CLIENT_KEY")


class Keys:
    """A server key pair and client key pairs in one directory, with an authorized-clients file."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.server_public, self.server_secret = make_pair(directory, "server", False, None)
        self.clients = directory / "authorized_clients"
        self.authorize()

    def client(self, name: str) -> Path:
        """``name``'s secret certificate (made on first use)."""
        secret = self.directory / f"{name}.key_secret"
        if not secret.exists():
            make_pair(self.directory, name, False, None)
        return secret

    def public(self, name: str) -> str:
        return read_public(self.directory / f"{name}.key")

    def authorize(self, *names: str) -> None:
        self.clients.write_text("# test clients\n" + "".join(
            f"{name} {read_public(self.client(name).with_suffix('.key'))}\n" for name in names))

    def config(self, socket: str = "tcp://127.0.0.1:*", **extra) -> dict:
        return {"socket": socket, "curve": {"secret_key": str(self.server_secret),
                                            "authorized_clients": str(self.clients)}, **extra}

    def as_client(self, daemon, name: str, **kwargs) -> Client:
        return Client(daemon.socket, server_key=str(self.server_public),
                      client_key=str(self.client(name)), **kwargs)


@pytest.fixture
def no_key_env(monkeypatch):
    for name in KEY_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def keys(short_tmp, no_key_env):
    return Keys(short_tmp)


def keyed_daemon(daemon_factory, keys: Keys, monkeypatch, *authorized: str, **config):
    """A CURVE daemon on loopback; the fixture's own readiness client is ``ready``."""
    keys.authorize("ready", *authorized)
    monkeypatch.setenv("OLLAMAD_SERVER_KEY", str(keys.server_public))
    monkeypatch.setenv("OLLAMAD_CLIENT_KEY", str(keys.client("ready")))
    daemon = daemon_factory(keys.config(**config), ready=False)
    daemon.wait_bound()
    daemon.wait_ready()
    for name in KEY_ENV:   # every other client names its keys
        monkeypatch.delenv(name)
    return daemon


def refused_within_connect_time(make_client) -> Unavailable:
    """A refused client hears `unavailable` after its connect_timeout, not its deadline."""
    started = time.monotonic()
    with make_client(timeout=30.0, connect_timeout=0.5) as client, \
            pytest.raises(Unavailable) as err:
        client.ping()
    assert time.monotonic() - started < 5.0
    return err.value


def test_a_known_key_is_served_and_its_name_is_the_tenant(daemon_factory, keys, monkeypatch,
                                                          wait_for):
    daemon = keyed_daemon(daemon_factory, keys, monkeypatch, "alice",
                          metrics={"listen": "127.0.0.1:0"})
    with keys.as_client(daemon, "alice", app="notes") as alice:
        assert alice.generate("hello", max_tokens=3)["text"]
        metrics, status = alice.metrics(), alice.status()
    tenant = next(t for t in metrics["tenants"] if t["app"] == "notes")
    assert tenant["tenant"] == "key:alice/notes" and tenant["key"] == "alice"
    assert tenant["user"] == "key:alice" and tenant["uid"] is None
    assert tenant["requests"] == 1 and tenant["successful_requests"] == 1
    assert "key:alice/notes" in [t["tenant"] for t in status["scheduling"]["tenants"]]
    assert re.search(r"request id=\S+ tenant=key:alice/notes op=generate", daemon.log())
    exposition = requests.get(metrics_url(daemon, wait_for), timeout=5).text
    assert any(("tenant", "key:alice/notes") in labels
               for labels in samples(exposition, "ollamad_requests_total"))


def test_unknown_keys_and_plain_clients_are_refused_and_counted(daemon_factory, keys,
                                                                  monkeypatch, wait_for):
    daemon = keyed_daemon(daemon_factory, keys, monkeypatch, "alice",
                          metrics={"listen": "127.0.0.1:0"})
    stranger = keys.client("mallory")
    with keys.as_client(daemon, "alice") as alice:
        before = alice.metrics()
        error = refused_within_connect_time(lambda **kw: Client(
            daemon.socket, server_key=str(keys.server_public), client_key=str(stranger), **kw))
        assert keys.public("mallory") in str(error)   # the message names the key to authorize
        refused_within_connect_time(lambda **kw: Client(daemon.socket, **kw))   # no keys at all
        wrong_server = refused_within_connect_time(lambda **kw: Client(
            daemon.socket, server_key=keys.public("alice"), client_key=str(keys.client("alice")),
            **kw))
        assert "server key must be the daemon's public key" in str(wrong_server)
        after = alice.metrics()
    assert after["auth_refusals"] > before["auth_refusals"]                # mallory
    assert after["handshake_failures"] >= before["handshake_failures"] + 2  # plain, wrong server
    assert after["ops"].get("ping") == before["ops"].get("ping")   # none got through
    assert f"its CURVE key {keys.public('mallory')} is not in authorized_clients" in daemon.log()
    exposition = requests.get(metrics_url(daemon, wait_for), timeout=5).text
    assert samples(exposition, "ollamad_auth_refusals_total")[frozenset()] >= 1
    assert samples(exposition, "ollamad_handshake_failures_total")[frozenset()] >= 2


def test_a_key_removed_on_reload_is_refused_for_new_connections(daemon_factory, keys,
                                                                 monkeypatch, wait_for):
    daemon = keyed_daemon(daemon_factory, keys, monkeypatch, "alice", "bob")
    with keys.as_client(daemon, "bob") as bob:
        assert bob.ping()["protocol"] == 1
    keys.authorize("ready", "alice")   # bob revoked
    with keys.as_client(daemon, "alice") as alice:
        refusals = alice.metrics()["auth_refusals"]
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "revoked bob" in daemon.log(), 10, "the reload")
        refused_within_connect_time(lambda **kw: keys.as_client(daemon, "bob", **kw))
        assert alice.metrics()["auth_refusals"] > refusals
        assert alice.ping()["protocol"] == 1   # the open connection stays


def test_a_bad_authorized_clients_file_on_reload_keeps_the_running_list(daemon_factory, keys,
                                                                       monkeypatch, wait_for):
    daemon = keyed_daemon(daemon_factory, keys, monkeypatch, "alice")
    keys.clients.write_text(keys.clients.read_text() + "broken line here\n")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed, keeping the running configuration" in daemon.log(), 10,
             "the failed reload")
    assert f"{keys.clients}:4: expected `NAME PUBLIC_KEY`" in daemon.log()   # after 3 lines
    with keys.as_client(daemon, "alice", connect_timeout=2.0) as alice:
        assert alice.ping()["protocol"] == 1


def test_a_key_named_like_a_local_user_gets_neither_its_limits_nor_admin(daemon_factory, keys,
                                                                         monkeypatch):
    daemon = keyed_daemon(daemon_factory, keys, monkeypatch, "root", "alice",
                          user_limits={"root": {"max_queued": 3, "max_timeout": 9.0},
                                       "key:alice": {"max_queued": 5}})
    with keys.as_client(daemon, "root") as as_root, keys.as_client(daemon, "alice") as alice:
        assert as_root.ping()["max_batch"] == 256     # the defaults, not uid 0's 3
        assert alice.ping()["max_batch"] == 5          # key:alice's own table
        with pytest.raises(OllamadError) as err:
            as_root.restart("a key is never an admin")
        assert err.value.code.value == "forbidden"
        as_root.generate("hi", max_tokens=2, timeout=30.0)   # uid 0's max_timeout 9 s not applied


def test_tcp_off_loopback_without_curve_does_not_start(daemon_factory, no_key_env):
    daemon = daemon_factory({"socket": "tcp://0.0.0.0:0"}, ready=False)
    assert daemon.process.wait(timeout=20) == 78
    log = daemon.log()
    assert "tcp://0.0.0.0:0 is reachable from other hosts and has no CURVE" in log
    assert "ollamad keygen" in log and "[curve] secret_key" in log


def test_a_bad_key_file_stops_start_up_naming_the_file_and_line(daemon_factory, keys):
    keys.clients.write_text("alice " + "~" * 40 + "\n")
    daemon = daemon_factory(keys.config(), ready=False)
    assert daemon.process.wait(timeout=20) == 78
    assert f"{keys.clients}:1: the key of 'alice' is not a Z85 CURVE public key" in daemon.log()


def test_tcp_on_loopback_without_curve_serves_with_a_warning(daemon_factory, no_key_env):
    daemon = daemon_factory({"socket": "tcp://127.0.0.1:*"}, ready=False)
    daemon.wait_bound()
    daemon.wait_ready()
    assert re.search(r"WARNING .*tcp://127\.0\.0\.1:\* has no CURVE: any local user can "
                     r"connect", daemon.log())
    with daemon.client() as client:
        client.generate("hi", max_tokens=2)
        assert client.metrics()["tenants"][0]["user"] == "tcp"


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "plain-loopback"])
def test_a_zmtp_1_0_peer_gets_no_message_through(daemon_factory, keys, monkeypatch, curve):
    if curve:
        daemon = keyed_daemon(daemon_factory, keys, monkeypatch, "alice")
        make = lambda: keys.as_client(daemon, "alice")   # noqa: E731
    else:
        daemon = daemon_factory({"socket": "tcp://127.0.0.1:*"}, ready=False)
        daemon.wait_bound()
        daemon.wait_ready()
        make = daemon.client
    host, port = daemon.socket[len("tcp://"):].rsplit(":", 1)
    with make() as client:
        before = client.metrics()
        peer = socket.create_connection((host, int(port)), timeout=5)
        try:
            # A ZMTP/1.0 greeting (anonymous identity), then a ping in 1.0 framing.
            body = b'{"v": 1, "id": "zmtp10", "op": "ping"}'
            peer.sendall(b"\x01\x00" + bytes([len(body) + 1, 0]) + body)
            try:   # libzmq's greeting, then it closes (or resets) the connection
                while peer.recv(4096):
                    pass
            except ConnectionResetError:
                pass
        finally:
            peer.close()
        after = client.metrics()
        for op in ("ping", "invalid"):
            assert after["ops"].get(op) == before["ops"].get(op), op
        assert after["dropped_messages"] == before["dropped_messages"]
        assert client.ping()["protocol"] == 1


# -- across hosts: a client in another network namespace -------------------------------------

def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def other_host():
    """A network namespace joined to this one by a veth pair: (namespace, our address)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2's `ip` for a network namespace")
    tag = secrets.token_hex(3)
    namespace, here, there = f"odt{tag}", f"vh{tag}", f"vn{tag}"
    net = 4 * secrets.randbelow(1 << 14)   # a /30 in 198.18.0.0/15 (RFC 2544, never routed)
    ours = f"198.{18 + (net >> 16)}.{(net >> 8) & 255}.{(net & 255) + 1}"
    theirs = f"198.{18 + (net >> 16)}.{(net >> 8) & 255}.{(net & 255) + 2}"
    try:
        _ip("netns", "add", namespace)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot make a network namespace here: {exc}")
    try:
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", there, "netns", namespace)
        _ip("addr", "add", f"{ours}/30", "dev", here)
        _ip("link", "set", here, "up")
        _ip("netns", "exec", namespace, "ip", "addr", "add", f"{theirs}/30", "dev", there)
        _ip("netns", "exec", namespace, "ip", "link", "set", there, "up")
        yield namespace, ours
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=10)


CLIENT_IN_NAMESPACE = """
import sys
from ollamad_client import Client, Unavailable
try:
    with Client(sys.argv[1], timeout=10.0, connect_timeout=2.0, app="remote") as client:
        print(client.generate("from afar", max_tokens=3)["model"])
except Unavailable as exc:
    print("unavailable:", exc)
"""


def test_a_client_on_another_host_is_served_with_its_key_and_refused_without(
        daemon_factory, keys, monkeypatch, other_host, reaper):
    namespace, address = other_host
    daemon = keyed_daemon(daemon_factory, keys, monkeypatch, "remote",
                          socket=f"tcp://{address}:*")
    assert daemon.socket.startswith(f"tcp://{address}:")

    def run_there(**env: str) -> str:
        process = reaper.spawn(["ip", "netns", "exec", namespace, sys.executable, "-c",
                                CLIENT_IN_NAMESPACE, daemon.socket],
                               env={**os.environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        return process.communicate(timeout=20)[0]

    served = run_there(OLLAMAD_SERVER_KEY=keys.public("server"),
                       OLLAMAD_CLIENT_KEY=str(keys.client("remote")))
    assert served.strip() == "llama3.1:8b", served
    assert "unavailable:" in run_there()   # no keys: the handshake fails
    with keys.as_client(daemon, "remote") as here:
        tenants = [t["tenant"] for t in here.metrics()["tenants"]]
    assert "key:remote/remote" in tenants
