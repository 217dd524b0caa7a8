"""Wire protocol v1: decoding validates everything a hostile peer can send."""

import json

import pytest

from ollamad_client import protocol
from ollamad_client.protocol import ErrorCode, ProtocolError, Request


def frame(**fields):
    base = {"v": 1, "id": "r1", "op": "generate", "args": {"prompt": "hi"}}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_round_trip():
    request = Request(id="x", op="chat", args={"messages": []}, timeout=2.5, stream=True)
    assert protocol.decode_request(protocol.encode_request(request)) == request


@pytest.mark.parametrize("data, code, has_id", [
    (b"\xff\xfe", ErrorCode.BAD_REQUEST, False),
    (b"[1, 2]", ErrorCode.BAD_REQUEST, False),
    (frame(id=...), ErrorCode.BAD_REQUEST, False),
    (frame(id=7), ErrorCode.BAD_REQUEST, False),
    (frame(id="x" * 129), ErrorCode.BAD_REQUEST, False),
    (frame(v=2), ErrorCode.BAD_REQUEST, True),
    (frame(op="launch"), ErrorCode.UNKNOWN_OP, True),
    (frame(op=None), ErrorCode.BAD_REQUEST, True),
    (frame(args=[]), ErrorCode.BAD_REQUEST, True),
    (frame(timeout=0), ErrorCode.BAD_REQUEST, True),
    (frame(timeout=True), ErrorCode.BAD_REQUEST, True),
    (frame(timeout=1e9), ErrorCode.BAD_REQUEST, True),
    (frame(stream="yes"), ErrorCode.BAD_REQUEST, True),
    (frame(op="batch", stream=True), ErrorCode.BAD_REQUEST, True),
    (frame(app=5), ErrorCode.BAD_REQUEST, True),
    (frame(app=""), ErrorCode.BAD_REQUEST, True),
    (frame(app="a" * 65), ErrorCode.BAD_REQUEST, True),
    (frame(app="two words"), ErrorCode.BAD_REQUEST, True),
    (frame(app="voice\n"), ErrorCode.BAD_REQUEST, True),
])
def test_bad_requests(data, code, has_id):
    with pytest.raises(ProtocolError) as err:
        protocol.decode_request(data)
    assert err.value.code is code
    assert err.value.request_id == ("r1" if has_id else None)


def test_reply_decoding():
    ok = protocol.decode_reply(protocol.encode_result("a", {"text": "t"}))
    assert ok.final and ok.result == {"text": "t"}
    chunk = protocol.decode_reply(protocol.encode_chunk("a", {"text": "t"}))
    assert not chunk.final
    err = protocol.decode_reply(protocol.encode_error("a", protocol.Error.of(ErrorCode.BUSY, "full"), attempts=2))
    assert err.error.code is ErrorCode.BUSY and err.error.retryable


def test_retryable_codes():
    assert ErrorCode.BUSY.retryable and ErrorCode.TIMEOUT.retryable
    assert not ErrorCode.MODEL_NOT_FOUND.retryable and not ErrorCode.BAD_REQUEST.retryable


def test_the_app_and_a_deadline_left_out_round_trip():
    named = Request(id="x", op="generate", args={}, app="voice-eval:v2", timeout_given=False)
    decoded = protocol.decode_request(protocol.encode_request(named))
    assert decoded == Request(id="x", op="generate", args={}, app="voice-eval:v2",
                              timeout=protocol.DEFAULT_TIMEOUT, timeout_given=False)
    assert "timeout" not in json.loads(protocol.encode_request(named))


def test_an_error_may_carry_a_retry_hint_and_nonsense_hints_are_ignored():
    hinted = protocol.Error.of(ErrorCode.BUSY, "full", retry_after=1.5)
    assert protocol.decode_reply(protocol.encode_error("a", hinted)).error.retry_after == 1.5
    for nonsense in (-1, True, "soon", 1e9):
        body = {"code": "busy", "message": "m", "retryable": True, "retry_after": nonsense}
        assert protocol.decode_error(body)[0].retry_after is None
