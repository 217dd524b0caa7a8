"""CURVE key files, the endpoint's security rules, key names as tenants, the ZAP policy."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils import z85

from ollamad import config as config_mod, configtables, curvekeys
from ollamad.configspec import ConfigError
from ollamad.config import Config, CurveSettings, TenantSettings
from ollamad.scheduling import LimitBook, Tenant, UserLimits, limit_book, principal
from ollamad.serving.zap import ZAP_ENDPOINT, RefusalLog, ZapHandler, ZapPolicy


def key_pair() -> tuple[bytes, bytes]:
    return zmq.curve_keypair()


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- the authorized-clients file ----------------------------------------------------------

def test_authorized_clients_are_read_with_comments_and_blank_lines(tmp_path):
    alice, bob = key_pair()[0], key_pair()[0]
    # A Z85 key may hold '#': only whole lines are comments.
    hashed = next(k for k in iter(lambda: key_pair()[0], None) if b"#" in k)
    path = write(tmp_path / "clients", f"# who may connect\n\nalice {alice.decode()}\n"
                 f"   bob\t{bob.decode()}   \n  # an indented comment\n"
                 f"carol@lab {hashed.decode()}\n")
    clients = curvekeys.load_authorized_clients(path)
    assert clients.name_of(z85.decode(alice)) == "alice"
    assert clients.name_of(z85.decode(bob)) == "bob"
    assert clients.name_of(z85.decode(hashed)) == "carol@lab"
    assert len(clients.names) == 3 and clients.path == path


@pytest.mark.parametrize("line, message", [
    ("alice", "expected `NAME PUBLIC_KEY`"),
    ("alice KEY extra", "expected `NAME PUBLIC_KEY`"),
    ("al:ice {key}", "is no key name"),
    ("a/b {key}", "is no key name"),
    ("alice tooshort", "is not a Z85 CURVE public key"),
    ("alice " + "~" * 40, "is not a Z85 CURVE public key"),
])
def test_a_bad_line_names_the_file_and_the_line(tmp_path, line, message):
    key = key_pair()[0].decode()
    path = write(tmp_path / "clients", f"# header\nok {key_pair()[0].decode()}\n"
                 + line.format(key=key) + "\n")
    with pytest.raises(ConfigError, match=message) as err:
        curvekeys.load_authorized_clients(path)
    assert f"{path}:3" in str(err.value)


def test_a_name_or_a_key_twice_is_an_error_naming_both_lines(tmp_path):
    one, two = key_pair()[0].decode(), key_pair()[0].decode()
    path = write(tmp_path / "a", f"alice {one}\nalice {two}\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: the name 'alice' is already on line 1"):
        curvekeys.load_authorized_clients(path)
    path = write(tmp_path / "b", f"alice {one}\n\nbob {one}\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: the key of 'bob' is already the key "
                                          r"of 'alice' \(line 1\)"):
        curvekeys.load_authorized_clients(path)


def test_an_unreadable_authorized_clients_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"curve.authorized_clients: cannot read .*missing"):
        curvekeys.load_authorized_clients(str(tmp_path / "missing"))
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        curvekeys.load_authorized_clients(str(path))


# -- the server's key pair ----------------------------------------------------------------

def test_the_server_key_pair_is_read_from_a_zeromq_certificate(tmp_path):
    public_file, secret_file = zmq.auth.create_certificates(tmp_path, "server")
    pair = curvekeys.load_server_key(secret_file)
    assert (pair.public, pair.secret) == zmq.auth.load_certificate(secret_file)
    with pytest.raises(ConfigError, match="is a public certificate: name the secret one"):
        curvekeys.load_server_key(public_file)
    with pytest.raises(ConfigError, match="curve.secret_key: cannot read"):
        curvekeys.load_server_key(str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="is not a ZeroMQ certificate"):
        curvekeys.load_server_key(write(tmp_path / "junk", "hello\n"))
    other_public = key_pair()[0].decode()
    mixed = Path(secret_file).read_text().replace(pair.public.decode(), other_public)
    with pytest.raises(ConfigError, match="the public key does not belong to the secret key"):
        curvekeys.load_server_key(write(tmp_path / "mixed", mixed))


# -- which endpoints may go without CURVE ---------------------------------------------------

@pytest.mark.parametrize("endpoint, loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.2.1:*", True), ("tcp://localhost:0", True),
    ("tcp://[::1]:5555", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False),
    ("tcp://10.0.0.1:5555", False), ("tcp://eth0:5555", False), ("tcp://lo:5555", False),
    ("tcp://[::]:5555", False), ("tcp://example.com:5555", False),
])
def test_only_loopback_addresses_count_as_loopback(endpoint, loopback):
    assert curvekeys.is_loopback(endpoint) is loopback


def keyed_config(tmp_path: Path, socket: str) -> Config:
    _, secret_file = zmq.auth.create_certificates(tmp_path, "server")
    clients = write(tmp_path / "clients", f"alice {key_pair()[0].decode()}\n")
    return Config(socket=socket, curve=CurveSettings(secret_key=secret_file,
                                                     authorized_clients=clients))


def test_tcp_off_loopback_without_curve_is_refused_with_the_way_to_fix_it():
    with pytest.raises(ConfigError) as err:
        curvekeys.security(Config(socket="tcp://0.0.0.0:5555"))
    message = str(err.value)
    assert "tcp://0.0.0.0:5555 is reachable from other hosts and has no CURVE" in message
    assert "ollamad keygen" in message and "[curve] secret_key" in message
    assert "authorized_clients" in message and "OLLAMAD_CURVE_SECRET_KEY" in message


def test_which_peers_each_endpoint_lets_in(tmp_path):
    assert curvekeys.security(Config(socket="ipc:///tmp/x.sock")).null_allowed
    plain = curvekeys.security(Config(socket="tcp://127.0.0.1:5555"))
    assert plain.null_allowed and plain.open_tcp and plain.curve is None
    keyed = curvekeys.security(keyed_config(tmp_path, "tcp://0.0.0.0:5555"))
    assert keyed.curve is not None and not keyed.null_allowed and not keyed.open_tcp
    assert list(keyed.clients.names.values()) == ["alice"]
    # ipc ignores the keys (its peers have uids), but bad files are still errors.
    on_ipc = curvekeys.security(keyed_config(tmp_path, "ipc:///tmp/x.sock"))
    assert on_ipc.curve is None and on_ipc.null_allowed


def test_the_server_key_and_the_clients_are_set_together(tmp_path):
    path = tmp_path / "o.toml"
    path.write_text('[curve]\nsecret_key = "/etc/ollamad/curve/server.key_secret"\n')
    with pytest.raises(ConfigError, match="curve.authorized_clients: must be set exactly when "
                                          "curve.secret_key is"):
        config_mod.load(path, env={})
    loaded = config_mod.load(path, env={"OLLAMAD_CURVE_AUTHORIZED_CLIENTS": "/x/clients"})
    assert loaded.curve.authorized_clients == "/x/clients"


# -- key names as tenants: never a uid ------------------------------------------------------

def test_a_key_name_is_its_own_principal_never_a_uid():
    assert principal(0, None) == 0
    assert principal(None, "root") == "key:root"
    assert principal(None, None) is None
    keyed = Tenant(None, "app", "root")
    assert keyed.user == "key:root" and keyed.label() == "key:root/app"
    assert keyed != Tenant(0, "app") and keyed.principal != Tenant(0, "app").principal
    assert Tenant(None, "app").user == "tcp"


def test_user_limits_for_a_key_apply_to_that_key_only():
    tables = configtables.user_limits({"root": {"max_queued": 3}, "key:alice": {"max_queued": 5},
                                       "key:root": {"max_queued": 7}}, "in test",
                                      TenantSettings())
    assert tables == {0: {"max_queued": 3}, "key:alice": {"max_queued": 5},
                      "key:root": {"max_queued": 7}}
    book = limit_book(Config(user_limits=tables))
    assert book.of(Tenant(0, "a").principal).max_queued == 3
    assert book.of(Tenant(None, "a", "root").principal).max_queued == 7
    assert book.of(Tenant(None, "a", "alice").principal).max_queued == 5
    assert book.of(Tenant(None, "a", "bob").principal) == book.default
    assert LimitBook(UserLimits(), {0: UserLimits(1)}).of("key:0") == UserLimits()
    with pytest.raises(ConfigError, match="a key name is 1 to 64 letters"):
        configtables.user_limits({"key:a/b": {"max_queued": 1}}, "in test", TenantSettings())


# -- the ZAP policy and requests --------------------------------------------------------------

def clients_of(**names: bytes) -> curvekeys.AuthorizedClients:
    return curvekeys.AuthorizedClients({z85.decode(key): name for name, key in names.items()})


def zap_request(mechanism: bytes, *credentials: bytes, domain: bytes = b"ollamad",
                version: bytes = b"1.0") -> list[bytes]:
    return [b"peer-id", b"", version, b"17", domain, b"10.0.0.9", b"", mechanism, *credentials]


def test_the_zap_policy(caplog):
    alice = key_pair()[0]
    keyed = ZapHandler(zmq.Context.instance(), ZapPolicy(False, clients_of(alice=alice)))
    answer = keyed.answer(zap_request(b"CURVE", z85.decode(alice)))
    assert answer == [b"peer-id", b"", b"1.0", b"17", b"200", b"OK", b"alice", b""]
    with caplog.at_level(logging.WARNING, "ollamad.zap"):
        stranger = key_pair()[0]
        assert keyed.answer(zap_request(b"CURVE", z85.decode(stranger)))[4] == b"400"
    assert f"refused a connection from 10.0.0.9: its CURVE key {stranger.decode()} is not " \
           "in authorized_clients" in caplog.text
    assert keyed.answer(zap_request(b"NULL"))[4] == b"400"
    assert keyed.answer(zap_request(b"PLAIN", b"user", b"pass"))[4] == b"400"
    assert keyed.answer(zap_request(b"CURVE", z85.decode(alice), domain=b"other"))[4] == b"400"
    plain = ZapHandler(zmq.Context.instance(), ZapPolicy(True))
    assert plain.answer(zap_request(b"NULL"))[4:7] == [b"200", b"OK", b""]
    assert plain.answer(zap_request(b"CURVE", z85.decode(alice)))[4] == b"400"


@pytest.mark.parametrize("frames", [
    [], [b"x"], [b"peer", b""], [b"peer", b"", b"1.0"], [b"peer", b"", b"2.0", b"1", b"ollamad",
                                                        b"", b"", b"NULL"],
    [b"peer", b"", b"1.0", b"1", b"ollamad", b"\xff\xfe", b"", b"CURVE"],
    [b"peer", b"", b"1.0", b"1", b"ollamad", b"", b"", b"CURVE", b"short"],
    [b"peer", b"", b"1.0", b"1", b"ollamad", b"", b"", b"CURVE", b"k" * 32, b"extra"],
])
def test_malformed_zap_requests_are_refused_or_dropped(frames):
    handler = ZapHandler(zmq.Context.instance(), ZapPolicy(True, clients_of()))
    reply = handler.answer(frames)
    if b"" not in frames:
        assert reply is None   # no envelope: nobody to answer
    else:
        assert reply[reply.index(b"") + 3] == b"400"


def test_refusals_are_logged_once_per_peer_and_reason_and_in_bounded_numbers(caplog):
    now = [0.0]
    refusals = RefusalLog(interval=60.0, burst=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "ollamad.zap"):
        for _ in range(50):                     # one client reconnecting every 100 ms
            refusals.refused("10.0.0.1", "unknown key")
        for n in range(10):                     # a flood from many addresses
            refusals.refused(f"10.0.1.{n}", "unknown key")
        assert len(caplog.records) == 3
        now[0] = 61.0
        refusals.refused("10.0.0.1", "unknown key")
    assert "57 more refused connections were not logged" in caplog.text
    assert caplog.text.count("refused a connection from 10.0.0.1") == 2


def test_the_zap_thread_serves_known_keys_refuses_others_survives_garbage_and_stops_in_time():
    context = zmq.Context()
    server_public, server_secret = key_pair()
    alice, eve = key_pair(), key_pair()
    refusals: list[int] = []
    handler = ZapHandler(context, ZapPolicy(False, clients_of(alice=alice[0])),
                         on_refusal=lambda: refusals.append(1))
    handler.start()
    sockets = []

    def socket(kind: int) -> zmq.Socket:
        sock = context.socket(kind)
        sock.linger = 0
        sockets.append(sock)
        return sock

    try:
        garbage = socket(zmq.DEALER)             # the handler's own endpoint, hostile frames
        garbage.connect(ZAP_ENDPOINT)
        for frames in ([b"x"], [b"", b"1.0"], [b"", b"\xff" * 1000, b"2", b"3"], [b""] * 9):
            garbage.send_multipart(frames)
        router = socket(zmq.ROUTER)
        router.curve_server = True
        router.curve_secretkey = server_secret
        router.zap_domain = b"ollamad"
        port = router.bind_to_random_port("tcp://127.0.0.1")

        def send_as(pair: tuple[bytes, bytes]) -> None:
            dealer = socket(zmq.DEALER)
            dealer.curve_serverkey, dealer.curve_publickey, dealer.curve_secretkey = \
                server_public, *pair
            dealer.connect(f"tcp://127.0.0.1:{port}")
            dealer.send(b"hello")

        send_as(eve)
        send_as(alice)
        assert router.poll(5000)
        frames = router.recv_multipart(copy=False)
        assert frames[-1].bytes == b"hello" and frames[-1].get("User-Id") == "alice"
        assert not router.poll(300)               # eve's message never arrives
        assert refusals and handler.alive()
        assert garbage.poll(1000)                 # garbage with an envelope was answered 400
        assert garbage.recv_multipart()[3] == b"400"
    finally:
        for sock in sockets:
            sock.close(linger=0)
    started = time.monotonic()
    handler.stop(timeout=2.0)
    assert not handler.alive() and time.monotonic() - started < 1.0
    context.term()                                # every socket, the handler's too, is closed
