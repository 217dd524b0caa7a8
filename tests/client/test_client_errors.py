"""The exception classes and their mapping from protocol error codes."""

from __future__ import annotations

import pickle

import pytest

import ollamad_client
from ollamad_client import (ERROR_CLASSES, BackendError, BadRequest, Busy, Cancelled, ErrorCode,
                            Forbidden, InternalError, ModelNotFound, NotAllowed, OllamadError, RequestTimeout,
                            ShuttingDown, TooLarge, Unavailable, UnknownOp, error_for)

EXPECTED = {
    ErrorCode.BAD_REQUEST: BadRequest, ErrorCode.UNKNOWN_OP: UnknownOp,
    ErrorCode.TOO_LARGE: TooLarge, ErrorCode.BUSY: Busy, ErrorCode.TIMEOUT: RequestTimeout,
    ErrorCode.BACKEND_ERROR: BackendError, ErrorCode.MODEL_NOT_FOUND: ModelNotFound,
    ErrorCode.UNAVAILABLE: Unavailable, ErrorCode.SHUTTING_DOWN: ShuttingDown,
    ErrorCode.FORBIDDEN: Forbidden, ErrorCode.CANCELLED: Cancelled,
    ErrorCode.NOT_ALLOWED: NotAllowed, ErrorCode.INTERNAL: InternalError,
}


def test_every_code_has_its_class():
    assert dict(ERROR_CLASSES) == EXPECTED


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_for_builds_the_class_with_code_message_and_retryable(code):
    exc = error_for(code.value, "it broke")
    assert type(exc) is EXPECTED[code] and isinstance(exc, OllamadError)
    assert exc.code is code and exc.message == "it broke" and exc.retryable is code.retryable
    assert str(exc) == f"{code.value}: it broke"


def test_the_base_takes_code_message_retryable():
    exc = OllamadError("busy", "queue full", False, attempts=3)
    assert exc.code is ErrorCode.BUSY and exc.retryable is False and exc.attempts == 3


@pytest.mark.parametrize("code", list(ErrorCode))
def test_errors_survive_pickling(code):
    exc = error_for(code, "over there", retryable=True, attempts=2)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert (back.code, back.message, back.retryable, back.attempts) == (code, "over there", True, 2)


def test_request_timeout_does_not_shadow_the_builtin():
    assert RequestTimeout is not TimeoutError and not hasattr(ollamad_client, "Timeout")


def test_public_surface_is_explicit():
    for name in ollamad_client.__all__:
        assert hasattr(ollamad_client, name), name
    assert not any(name.startswith("_") for name in ollamad_client.__all__)
