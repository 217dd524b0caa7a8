"""Malformed, oversized and hostile messages never crash or wedge the daemon."""

from __future__ import annotations

import json
import re
import time

import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from ollamad_client import protocol


def raw_socket(endpoint: str, kind: int = zmq.DEALER) -> zmq.Socket:
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 2000)
    sock.setsockopt(zmq.SNDTIMEO, 2000)
    sock.connect(endpoint)
    return sock


def still_serves(daemon) -> None:
    with daemon.client(timeout=10.0) as client:
        assert client.generate("are you alive?", max_tokens=4)["text"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

REQUEST_SHAPES = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1", None]),
     "id": st.one_of(st.text(min_size=1, max_size=12), st.integers(), st.none()),
     # Not restart: the tests run as root, an admin, and each would restart Ollama (its
     # hostile arguments have a test of their own).
     "op": st.one_of(st.sampled_from(sorted(protocol.ALL_OPS - {"restart"})),
                     st.text(max_size=10), st.integers()),
     "args": st.one_of(st.dictionaries(st.sampled_from(
         ["prompt", "prompts", "messages", "model", "temperature", "max_tokens", "options",
          "format", "keep_alive", "input", "system"]), JSON_VALUES, max_size=5), JSON_VALUES),
     "timeout": st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=0.05, max_value=2), JSON_VALUES),
     "stream": st.one_of(st.booleans(), JSON_VALUES)})


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.binary(max_size=256), min_size=1, max_size=4))
def _random_frames(daemon, frames):
    sock = raw_socket(daemon.socket)
    try:
        sock.send_multipart(frames)
    finally:
        sock.close()


def test_random_frames(daemon):
    _random_frames(daemon)
    still_serves(daemon)


SURROGATE_TEXT = st.text(alphabet=st.characters(codec=None, min_codepoint=0xD7F0,
                                                max_codepoint=0xE010), max_size=6)
MESSAGES = st.one_of(
    REQUEST_SHAPES.map(lambda r: ("shape", r)),
    st.tuples(st.just("deep"), st.integers(min_value=1, max_value=3000),
              st.sampled_from(["[", "{\"a\":"])),
    st.tuples(st.just("surrogate"), SURROGATE_TEXT),
    st.tuples(st.just("frames"), st.lists(st.binary(max_size=64), min_size=1, max_size=3)),
)
#: Examples of 70 messages each: with 150 examples, 10,500 messages.
MESSAGES_PER_EXAMPLE = 70


def _encode(index: int, message) -> tuple[list[bytes], str | None]:
    """The frames to send, and the id whose one final reply must come back (None: no id)."""
    kind = message[0]
    if kind == "shape":
        request = dict(message[1])
        if isinstance(request.get("args"), dict) and request["op"] in (
                "generate", "chat", "batch", "embed"):
            request["args"]["model"] = "absent"   # each reaches Ollama cheaply
        if isinstance(request["id"], str):
            request["id"] = f"{index}-{request['id']}"[:128]
        rid = request["id"] if isinstance(request["id"], str) else None
        return [json.dumps(request).encode()], rid
    if kind == "deep":
        depth, opener = message[1], message[2]
        closer = "]" if opener == "[" else "}"
        nested = opener * depth + "1" + closer * depth
        return [f'{{"v": 1, "id": "deep-{index}", "op": "ping", "args": {{"x": {nested}}}}}'
                .encode()], f"deep-{index}"
    if kind == "surrogate":
        rid = f"s{index}-{message[1]}"
        # The JSON round trip joins a high and a low surrogate into one
        # character: the id the daemon reads (and echoes) is that one.
        return [json.dumps({"v": 1, "id": rid, "op": "ping"}).encode()], json.loads(json.dumps(rid))
    return list(message[1]), None


def hostile_messages() -> list:
    """More than 10,000 generated messages (150 examples of 70), generated before any is sent.

    No shrinking: minimising against a live daemon takes minutes; a failure names the ids.
    """
    collected: list = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate])
    @given(messages=st.lists(MESSAGES, min_size=MESSAGES_PER_EXAMPLE,
                             max_size=MESSAGES_PER_EXAMPLE))
    def collect(messages):
        collected.extend(messages)

    collect()
    return collected


def _count_final(sock: zmq.Socket, expected: dict[str, int], timeout_ms: int) -> bool:
    """Count one reply if one comes within ``timeout_ms``; False when none came."""
    if not sock.poll(timeout_ms):
        return False
    # A message of several frames may look like a REQ envelope to the daemon,
    # which then answers with one: the reply is the last frame.
    reply = protocol.decode_reply(sock.recv_multipart()[-1])
    if reply.final and reply.id in expected:
        expected[reply.id] += 1
    return True


def test_ten_thousand_hostile_messages_each_with_an_id_get_exactly_one_reply(daemon_factory):
    daemon = daemon_factory({"ollama": {"probe_interval": 60.0}})
    messages = hostile_messages()
    assert len(messages) >= 10_000
    expected: dict[str, int] = {}
    sock = raw_socket(daemon.socket)
    try:
        for index, message in enumerate(messages):
            frames, rid = _encode(index, message)
            sock.send_multipart(frames)
            if rid is not None:
                expected[rid] = 0
            while _count_final(sock, expected, 0):   # take replies as they come
                pass
        deadline = time.monotonic() + 30
        while any(n == 0 for n in expected.values()) and time.monotonic() < deadline:
            _count_final(sock, expected, 100)
        while _count_final(sock, expected, 300):   # any late reply must not be a second one
            pass
    finally:
        sock.close()
    wrong = {rid: n for rid, n in expected.items() if n != 1}
    assert not wrong, f"{len(wrong)} of {len(expected)} ids without exactly one reply: {wrong}"
    still_serves(daemon)


@pytest.mark.parametrize("body, code", [
    (b"not json", None),
    (b"[" * 1000, None),
    (b"[" * 100_000, None),
    (b'{"v": 1, "id": "too-deep", "op": "ping", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}",
     "bad_request"),
    (b'{"v": 1, "id": "n", "op": "generate", "args": {"prompt": "x", "temperature": NaN}}',
     "bad_request"),
    (b'{"v": 1, "id": "i", "op": "ping", "args": {"x": -Infinity}}', "bad_request"),
    (b'{"v": 1, "id": "e", "op": "ping", "args": {"x": 1e999}}', "bad_request"),
    (b'{"v": true, "id": "t", "op": "ping"}', "bad_request"),
    (b'{"v": 1.0, "id": "f", "op": "ping"}', "bad_request"),
    (b'{"v": 1, "id": "deep", "op": "ping", "args": {"x": ' + b"[" * 500 + b"]" * 500 + b"}}",
     "bad_request"),
    (b'{"v": 2, "id": "\\ud800", "op": "ping"}', "bad_request"),
    (b'{"v": 1, "id": "r", "op": "generate", "args": {"prompt": "x", "format": "yaml"}}',
     "bad_request"),
    (b'{"v": 1, "id": "role", "op": "chat", "args": {"messages": [{"role": "root", "content": "x"}]}}',
     "bad_request"),
    (b'{"v": 1, "id": "many", "op": "embed", "args": {"input": ' +
     json.dumps(["x"] * 4000).encode() + b'}}', "too_large"),
    (b'{"v": 1, "id": "a", "op": "explode"}', "unknown_op"),
    (b'{"v": 1, "id": "b", "op": "generate", "args": {"prompt": ["x"]}}', "bad_request"),
    (b'{"v": 1, "id": "c", "op": "generate", "timeout": "soon"}', "bad_request"),
    (b'{"v": 1, "id": "d", "op": "status", "stream": true}', "bad_request"),
])
def test_specific_bad_requests(shared_daemon, body, code, wait_for):
    daemon = shared_daemon
    with daemon.client() as client:
        dropped = client.metrics()["dropped_messages"]
    sock = raw_socket(daemon.socket)
    try:
        sock.send(body)
        if code is None:
            # No id to answer: dropped and counted (on another socket, so wait).
            with daemon.client() as client:
                wait_for(lambda: client.metrics()["dropped_messages"] == dropped + 1, 5,
                         "the drop count")
        else:
            reply = protocol.decode_reply(sock.recv())
            assert reply.error is not None and reply.error.code.value == code
            sent_id = json.loads(re.search(rb'"id": ("[^"]*")', body).group(1))
            assert reply.id == sent_id
            assert sock.poll(200) == 0, "exactly one reply"
    finally:
        sock.close()
    still_serves(daemon)


def test_a_lone_surrogate_id_is_answered_with_that_id(shared_daemon):
    daemon = shared_daemon
    sock = raw_socket(daemon.socket)
    try:
        sock.send(b'{"v": 1, "id": "\\ud800", "op": "ping"}')
        reply = protocol.decode_reply(sock.recv())
    finally:
        sock.close()
    assert reply.id == "\ud800" and reply.result["protocol"] == 1


def test_a_zmtp_1_0_peer_is_refused_by_libzmq(daemon):
    import socket as plain
    path = daemon.socket[len("ipc://"):]
    peer = plain.socket(plain.AF_UNIX, plain.SOCK_STREAM)
    peer.settimeout(5)
    try:
        peer.connect(path)
        peer.sendall(b"\x01\x00\x05\x00ping")   # a ZMTP/1.0 greeting and message
        leftover = b""
        while chunk := peer.recv(4096):             # libzmq closes the connection
            leftover += chunk
    finally:
        peer.close()
    with daemon.client() as client:
        assert client.ping()["protocol"] == 1
        assert client.metrics()["ops"].get("invalid") is None   # it never reached the loop


def test_an_oversized_message_disconnects_only_its_sender(daemon):
    sock = raw_socket(daemon.socket)
    try:
        sock.send(b"x" * (protocol.DEFAULT_MAX_MESSAGE_BYTES + 1))
        with pytest.raises(zmq.Again):
            sock.recv()
    finally:
        sock.close()
    still_serves(daemon)


def test_the_client_refuses_to_send_an_oversized_request(shared_daemon):
    daemon = shared_daemon
    from ollamad_client import OllamadError
    with daemon.client() as client, pytest.raises(OllamadError) as err:
        client.generate("x" * protocol.DEFAULT_MAX_MESSAGE_BYTES)
    assert err.value.code.value == "too_large"
    still_serves(daemon)


def test_a_req_peer_gets_its_reply(shared_daemon):
    daemon = shared_daemon
    sock = raw_socket(daemon.socket, zmq.REQ)
    try:
        sock.send(protocol.encode_request(protocol.Request(id="req-1", op="ping")))
        reply = protocol.decode_reply(sock.recv())
    finally:
        sock.close()
    assert reply.id == "req-1" and reply.result["protocol"] == 1


def test_a_client_that_vanishes_mid_request_costs_nothing(daemon_factory, wait_for):
    # Slow tokens: each generation would run ~10 s if nobody cut it.
    daemon = daemon_factory({"ollama": {"probe_interval": 60.0}},
                            env={"OLLAMAD_STANDIN_TOKEN_DELAY": "0.3"})
    daemon.quiesce()
    for i in range(4):
        sock = raw_socket(daemon.socket)
        sock.send(protocol.encode_request(protocol.Request(
            id=f"gone-{i}", op="generate", args={"prompt": f"bye {i}", "max_tokens": 200})))
        wait_for(lambda: daemon.standin_state()["stats"]["generations_in_flight"] == 1, 10,
                 "the generation to reach Ollama")
        sock.close()
        # The daemon sees the connection close, cancels the request and cuts
        # its HTTP connection: Ollama stops generating (the stand-in notices
        # at its next token, 0.3 s at most).
        wait_for(lambda: daemon.standin_state()["stats"]["generations_in_flight"] == 0, 1.5,
                 "Ollama to stop generating for the vanished client")
    with daemon.client() as client:
        status = client.status()["daemon"]
        metrics = client.metrics()
    assert status["busy_workers"] == 0 and status["queue_depth"] == 0
    assert metrics["errors"].get("cancelled") == 4
    assert daemon.standin_state()["stats"]["completed_generations"] == 0
    still_serves(daemon)


def test_restart_is_refused_over_tcp(daemon_factory):
    from ollamad_client import OllamadError
    daemon = daemon_factory({"socket": "tcp://127.0.0.1:*"}, ready=False)
    assert daemon.wait_bound().startswith("tcp://127.0.0.1:")
    daemon.wait_ready()
    with daemon.client() as client, pytest.raises(OllamadError) as err:
        client.restart("test")
    assert err.value.code.value == "forbidden"


def test_a_restart_with_hostile_arguments_is_answered_and_its_reason_bounded(daemon):
    sock = raw_socket(daemon.socket)
    try:
        for i, reason in enumerate([["not", "text"], "r" * 100_000, "", {"x": 1}, None]):
            sock.send(json.dumps({"v": 1, "id": f"restart-{i}", "op": "restart",
                                  "args": {"reason": reason}}).encode())
            reply = protocol.decode_reply(sock.recv())
            assert reply.id == f"restart-{i}" and reply.error is None
            shown = reply.result["reason"]
            assert shown == "r" * 200 if isinstance(reason, str) and reason \
                else shown.startswith("admin request (pid ")
    finally:
        sock.close()
    still_serves(daemon)
