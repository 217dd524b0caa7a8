"""Exceptions raised by :class:`~ollamad_client.Client` and :class:`~ollamad_client.AsyncClient`.

One class per protocol error code, all under :class:`OllamadError`, so
callers can catch exactly what they handle::

    try:
        client.generate("Hi")
    except Busy:
        ...                      # back off and retry
    except OllamadError as exc:  # anything else the daemon (or the client) reported
        log.warning("ollamad %s: %s", exc.code.value, exc.message)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .protocol import Error, ErrorCode, decode_error


class OllamadError(Exception):
    """A request failed: ``code`` (an :class:`ErrorCode`), ``message``, ``retryable``.

    ``attempts`` is how many calls the daemon made to Ollama before failing,
    when it says (``None`` otherwise); ``retry_after`` the seconds after which
    a retry is likely to find room, when the daemon says (a ``busy`` hint).
    """

    def __init__(self, code: ErrorCode | str, message: str, retryable: bool | None = None,
                 *, attempts: int | None = None, retry_after: float | None = None):
        self.code = ErrorCode(code)
        self.message = message
        self.retryable = self.code.retryable if retryable is None else retryable
        self.attempts = attempts
        self.retry_after = retry_after
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, retryable={self.retryable})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take (message, ...) rather than (code, message, ...):
        # rebuild through error_for so pickling (multiprocessing) keeps the class.
        return (error_for, (self.code.value, self.message, self.retryable, self.attempts,
                            self.retry_after))


class _CodedError(OllamadError):
    """Base of the per-code classes: the code is fixed by the class."""

    CODE: ClassVar[ErrorCode]

    def __init__(self, message: str, retryable: bool | None = None, *, attempts: int | None = None,
                 retry_after: float | None = None):
        super().__init__(self.CODE, message, retryable, attempts=attempts,
                         retry_after=retry_after)


class BadRequest(_CodedError):
    """Malformed request or invalid arguments (also Ollama's own 4xx)."""
    CODE = ErrorCode.BAD_REQUEST


class UnknownOp(_CodedError):
    """The daemon does not serve this op."""
    CODE = ErrorCode.UNKNOWN_OP


class TooLarge(_CodedError):
    """The request is over ``max_message_bytes``; refused before sending."""
    CODE = ErrorCode.TOO_LARGE


class Busy(_CodedError):
    """The daemon's queue (or this user's share of it) is full; retry after ``retry_after`` s."""
    CODE = ErrorCode.BUSY


class RequestTimeout(_CodedError):
    """The request's deadline passed (named so to leave the builtin ``TimeoutError`` alone)."""
    CODE = ErrorCode.TIMEOUT


class BackendError(_CodedError):
    """Ollama failed after all attempts; the message is Ollama's own text."""
    CODE = ErrorCode.BACKEND_ERROR


class ModelNotFound(_CodedError):
    """Ollama does not have the model."""
    CODE = ErrorCode.MODEL_NOT_FOUND


class Unavailable(_CodedError):
    """Ollama cannot be reached by the daemon, or the daemon by this client."""
    CODE = ErrorCode.UNAVAILABLE


class ShuttingDown(_CodedError):
    """The daemon is stopping and did not run the request."""
    CODE = ErrorCode.SHUTTING_DOWN


class Forbidden(_CodedError):
    """An admin op from a peer that is not an admin."""
    CODE = ErrorCode.FORBIDDEN


class Cancelled(_CodedError):
    """The request was cancelled (by this client, or by the daemon on its behalf)."""
    CODE = ErrorCode.CANCELLED


class NotAllowed(_CodedError):
    """The host's policy refuses it: a model not allowed, or a keep_alive too long."""
    CODE = ErrorCode.NOT_ALLOWED


class InternalError(_CodedError):
    """A bug in the daemon (or a reply this client cannot read)."""
    CODE = ErrorCode.INTERNAL


#: The exception class for each protocol error code.
ERROR_CLASSES: Mapping[ErrorCode, type[_CodedError]] = {
    cls.CODE: cls
    for cls in (BadRequest, UnknownOp, TooLarge, Busy, RequestTimeout, BackendError,
                ModelNotFound, Unavailable, ShuttingDown, Forbidden, Cancelled, NotAllowed,
                InternalError)
}
assert set(ERROR_CLASSES) == set(ErrorCode), "every error code needs its class"


def error_for(code: ErrorCode | str, message: str, retryable: bool | None = None,
              attempts: int | None = None, retry_after: float | None = None) -> OllamadError:
    """The exception of the right class for ``code``."""
    return ERROR_CLASSES[ErrorCode(code)](message, retryable, attempts=attempts,
                                          retry_after=retry_after)


def from_wire(error: Error, attempts: int | None = None) -> OllamadError:
    """The exception for a decoded protocol :class:`Error`."""
    return error_for(error.code, error.message, error.retryable, attempts, error.retry_after)


def from_error_object(obj: Any) -> OllamadError:
    """The exception for a raw error object, as found in batch items."""
    return from_wire(*decode_error(obj))
