"""The client's CURVE keys: from arguments or the environment, and bad ones refused at once."""

from __future__ import annotations

import pytest
import zmq
import zmq.auth

from ollamad_client import AsyncClient, Client, OllamaClient, get_ollama_client
from ollamad_client._connection import open_dealer

ENDPOINT = "tcp://127.0.0.1:5555"


@pytest.fixture
def certificates(tmp_path, monkeypatch):
    monkeypatch.delenv("OLLAMAD_SERVER_KEY", raising=False)
    monkeypatch.delenv("OLLAMAD_CLIENT_KEY", raising=False)
    server = zmq.auth.create_certificates(tmp_path, "server")
    client = zmq.auth.create_certificates(tmp_path, "alice")
    return {"server": server[0], "server_secret": server[1], "alice": client[0],
            "alice_secret": client[1]}


def test_keys_from_files_or_a_z85_key_make_a_curve_client(certificates):
    server_public = zmq.auth.load_certificate(certificates["server"])[0]
    public, secret = zmq.auth.load_certificate(certificates["alice_secret"])
    for server_key in (certificates["server"], server_public.decode(), server_public):
        with Client(ENDPOINT, server_key=server_key,
                    client_key=certificates["alice_secret"]) as client:
            assert (client.curve.server_public, client.curve.public, client.curve.secret) == \
                (server_public, public, secret)
            assert secret.decode() not in repr(client.curve)   # never shown


def test_the_environment_supplies_the_keys_for_every_client_kind(certificates, monkeypatch):
    monkeypatch.setenv("OLLAMAD_SERVER_KEY", certificates["server"])
    monkeypatch.setenv("OLLAMAD_CLIENT_KEY", certificates["alice_secret"])
    public = zmq.auth.load_certificate(certificates["alice"])[0]
    with Client(ENDPOINT) as client:
        assert client.curve.public == public
    assert AsyncClient(ENDPOINT).curve.public == public
    legacy = OllamaClient(socket=ENDPOINT)
    assert legacy.client.curve.public == public
    legacy.shutdown()
    monkeypatch.setenv("OLLAMAD_SOCKET", ENDPOINT)
    shared = get_ollama_client()
    try:
        assert shared.client.curve.public == public
    finally:
        shared.shutdown()


@pytest.mark.parametrize("server_key, client_key, message", [
    ("not-a-key", "alice_secret", "server_key: 'not-a-key' is neither the daemon's public key"),
    ("~" * 40, "alice_secret", "is neither the daemon's public key"),
    ("server", "alice", "client_key: .*alice.key is a public certificate"),
    ("server", "/nonexistent/alice.key_secret", "client_key: cannot read"),
    ("server", None, r"client_key \(\$OLLAMAD_CLIENT_KEY\) is missing"),
    (None, "alice_secret", r"server_key \(\$OLLAMAD_SERVER_KEY\) is missing"),
    ("junk_file", "alice_secret", "server_key: .* is not a ZeroMQ certificate"),
])
def test_a_bad_key_is_a_value_error_when_the_client_is_made(certificates, tmp_path, server_key,
                                                             client_key, message):
    (tmp_path / "junk").write_text("no keys here\n")
    files = {**certificates, "junk_file": str(tmp_path / "junk")}
    with pytest.raises(ValueError, match=message):
        Client(ENDPOINT, server_key=files.get(server_key, server_key),
               client_key=files.get(client_key, client_key))
    with pytest.raises(ValueError, match=message):
        OllamaClient(socket=ENDPOINT, server_key=files.get(server_key, server_key),
                     client_key=files.get(client_key, client_key))


def test_a_bad_environment_key_is_a_value_error_too(certificates, monkeypatch):
    monkeypatch.setenv("OLLAMAD_SERVER_KEY", "garbage")
    monkeypatch.setenv("OLLAMAD_CLIENT_KEY", certificates["alice_secret"])
    with pytest.raises(ValueError, match="server_key: 'garbage'"):
        Client(ENDPOINT)


def test_only_a_tcp_dealer_becomes_a_curve_client(certificates):
    with Client(ENDPOINT, server_key=certificates["server"],
                client_key=certificates["alice_secret"]) as client:
        keys = client.curve
    context = zmq.Context()
    tcp = open_dealer(context, ENDPOINT, keys)
    ipc = open_dealer(context, "ipc:///tmp/ollamad-curve-test.sock", keys)
    try:
        assert tcp.getsockopt(zmq.MECHANISM) == zmq.CURVE
        assert ipc.getsockopt(zmq.MECHANISM) == zmq.NULL   # ipc peers are known by uid
    finally:
        tcp.close(linger=0)
        ipc.close(linger=0)
        context.term()
