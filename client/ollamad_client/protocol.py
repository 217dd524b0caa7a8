"""Wire protocol version 1 between ollamad and its clients.

This module is the single definition of the protocol: the daemon imports it
from here, so client and server can never disagree. It uses the standard
library only. The prose specification is ``docs/protocol.md``.

Every message is one ZeroMQ frame holding one UTF-8 JSON object.

Request::

    {"v": 1, "id": "<unique str>", "op": "generate", "args": {...},
     "timeout": 10.0, "stream": false}

Final reply (exactly one per accepted request)::

    {"v": 1, "id": ..., "ok": true, "result": {...}}
    {"v": 1, "id": ..., "ok": false,
     "error": {"code": "...", "message": "...", "retryable": bool}}

Stream chunk (zero or more, before the final reply, only when ``stream`` is
true)::

    {"v": 1, "id": ..., "chunk": {"text": "..."}}
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

VERSION = 1

#: Default largest message, in bytes, either side accepts. The daemon
#: enforces it with ZMQ_MAXMSGSIZE (which silently disconnects the sender), so
#: the client checks it before sending and raises ``too_large`` itself.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

#: Longest accepted request id, in characters.
MAX_ID_LENGTH = 128

#: Deepest nesting of arrays and objects a request may have.
MAX_NESTING = 32

#: Default overall deadline of a request, in seconds, when it names none.
DEFAULT_TIMEOUT = 60.0

#: Longest deadline a request may ask for, in seconds.
MAX_TIMEOUT = 3600.0

#: What an app name (the request's ``app``) may be: 1 to 64 of these characters.
APP_NAME = re.compile(r"[A-Za-z0-9._:@+/-]{1,64}")


class ErrorCode(str, enum.Enum):
    """The closed set of error codes a final reply can carry."""

    BAD_REQUEST = "bad_request"          # malformed or invalid request
    UNKNOWN_OP = "unknown_op"            # op is not one the daemon serves
    TOO_LARGE = "too_large"              # message over the size limit
    BUSY = "busy"                        # request queue full; try again
    TIMEOUT = "timeout"                  # the request's deadline passed
    BACKEND_ERROR = "backend_error"      # Ollama answered with an error
    MODEL_NOT_FOUND = "model_not_found"  # Ollama does not have the model
    UNAVAILABLE = "unavailable"          # daemon or Ollama cannot be reached
    SHUTTING_DOWN = "shutting_down"      # daemon is stopping
    FORBIDDEN = "forbidden"              # admin op from a non-admin peer
    CANCELLED = "cancelled"              # the client (or the daemon for it) cancelled it
    NOT_ALLOWED = "not_allowed"          # the host's policy refuses it (model, keep_alive)
    INTERNAL = "internal"                # a bug in the daemon

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {ErrorCode.BUSY, ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE,
     ErrorCode.SHUTTING_DOWN, ErrorCode.BACKEND_ERROR}
)

#: Ops every client may call.
PUBLIC_OPS = frozenset(
    {"generate", "chat", "batch", "embed", "models", "health", "status",
     "metrics", "gpu", "ping", "cancel"}
)
#: Ops limited to root, the daemon's own user and the admin group.
ADMIN_OPS = frozenset({"restart", "pull"})
#: Ops that may stream chunks before their final reply.
STREAMING_OPS = frozenset({"generate", "chat", "pull"})
ALL_OPS = PUBLIC_OPS | ADMIN_OPS


class ProtocolError(ValueError):
    """A message that does not follow the protocol.

    ``request_id`` is set when the id could be recovered, so the daemon can
    still answer ``bad_request`` to the right caller.
    """

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    id: str
    op: str
    args: Mapping[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    stream: bool = False
    #: The app the client says it is (for accounting and fairness, not for trust).
    app: str | None = None
    #: False when the request named no ``timeout``: a profile's may apply.
    timeout_given: bool = True


@dataclass(frozen=True)
class Error:
    code: ErrorCode
    message: str
    retryable: bool
    #: Seconds after which a retry is likely to succeed (a ``busy`` hint), when known.
    retry_after: float | None = None

    @classmethod
    def of(cls, code: ErrorCode, message: str, retryable: bool | None = None,
           retry_after: float | None = None) -> "Error":
        return cls(code, message, code.retryable if retryable is None else retryable,
                   retry_after)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code.value, "message": self.message,
                                "retryable": self.retryable}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


def _dumps(obj: Mapping[str, Any]) -> bytes:
    # A lone surrogate (a valid JSON escape, so a request id may hold one)
    # cannot be UTF-8: written back as the same \uXXXX escape, it stays valid
    # JSON and the reply still carries the id the client sent.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "backslashreplace")


def _nesting_exceeds(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests arrays and objects deeper than ``limit`` (no recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in value
                     if isinstance(child, (dict, list)))
    return False


def _parse(frame: bytes | str) -> tuple[Any, str | None]:
    """JSON, and the first non-finite number in it (NaN, Infinity, 1e999) if any.

    The non-finite values become ``None`` so that the id can still be read
    and the sender told what was wrong. Nesting too deep for the parser is a
    ValueError.
    """
    problems: list[str] = []

    def constant(name: str) -> None:
        problems.append(name)

    def number(text: str) -> float | None:
        value = float(text)
        if math.isinf(value):
            problems.append(text[:32])
            return None
        return value

    try:
        obj = json.loads(frame, parse_constant=constant, parse_float=number)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return obj, (f"{problems[0]} is not a finite JSON number" if problems else None)


def loads(frame: bytes | str) -> Any:
    """Strict JSON: no NaN or Infinity, no nesting too deep for the parser (ValueError)."""
    obj, problem = _parse(frame)
    if problem:
        raise ValueError(problem)
    return obj


def encode_request(request: Request) -> bytes:
    obj: dict[str, Any] = {"v": VERSION, "id": request.id, "op": request.op,
                           "args": dict(request.args), "stream": request.stream}
    if request.timeout_given:
        obj["timeout"] = request.timeout
    if request.app is not None:
        obj["app"] = request.app
    return _dumps(obj)


def encode_result(request_id: str, result: Mapping[str, Any]) -> bytes:
    return _dumps({"v": VERSION, "id": request_id, "ok": True, "result": result})


def encode_error(request_id: str | None, error: Error, attempts: int | None = None) -> bytes:
    """``attempts``: how many calls to Ollama were made before failing, when any."""
    body = error.to_json()
    if attempts:
        body["attempts"] = attempts
    return _dumps({"v": VERSION, "id": request_id, "ok": False, "error": body})


def encode_chunk(request_id: str, chunk: Mapping[str, Any]) -> bytes:
    return _dumps({"v": VERSION, "id": request_id, "chunk": chunk})


#: An "id" member near the start of a frame that is not parseable JSON.
_ID_NEAR_START = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.){1,768}")')


def _scrape_id(frame: bytes | str) -> str | None:
    """Best effort: the id of a frame that is too broken (or deep) to parse."""
    head = frame[:4096] if isinstance(frame, bytes) else frame[:4096].encode("utf-8", "replace")
    found = _ID_NEAR_START.search(head)
    if found is None:
        return None
    try:
        return _recover_id({"id": json.loads(found.group(1))})
    except ValueError:
        return None


def _recover_id(obj: Any) -> str | None:
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_LENGTH:
            return rid
    return None


def decode_request(frame: bytes) -> Request:
    """Parse and validate one request frame, or raise :class:`ProtocolError`."""
    try:
        obj, problem = _parse(frame)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"request is not JSON: {exc}",
                            _scrape_id(frame)) from None
    rid = _recover_id(obj)
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "request must be a JSON object")
    if rid is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"request needs an 'id': a string of 1 to {MAX_ID_LENGTH} characters")

    def bad(message: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> ProtocolError:
        return ProtocolError(code, message, rid)

    if problem:
        raise bad(f"request is not strict JSON: {problem}")

    version = obj.get("v")
    if type(version) is not int or version != VERSION:  # true and 1.0 are not 1
        raise bad(f"unsupported protocol version {str(version)[:32]!r}; "
                  f"this daemon speaks {VERSION}")
    if _nesting_exceeds(obj, MAX_NESTING):
        raise bad(f"request nests arrays and objects deeper than {MAX_NESTING} levels")
    op = obj.get("op")
    if not isinstance(op, str):
        raise bad("'op' must be a string")
    if op not in ALL_OPS:
        raise bad(f"unknown op {op[:64]!r}", ErrorCode.UNKNOWN_OP)
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise bad("'args' must be an object")
    timeout = obj.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 < timeout <= MAX_TIMEOUT:
        raise bad(f"'timeout' must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    stream = obj.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false")
    if stream and op not in STREAMING_OPS:
        raise bad(f"op {op!r} cannot stream")
    app = obj.get("app")
    if app is not None and not (isinstance(app, str) and APP_NAME.fullmatch(app)):
        raise bad("'app' must be 1 to 64 letters, digits or ._:@+/- characters")
    return Request(id=rid, op=op, args=args, timeout=float(timeout), stream=stream, app=app,
                   timeout_given="timeout" in obj)


@dataclass(frozen=True)
class Reply:
    """A decoded message from the daemon: a chunk, or a final result or error."""

    id: str | None
    result: Mapping[str, Any] | None = None
    error: Error | None = None
    chunk: Mapping[str, Any] | None = None
    #: With ``error``: how many calls to Ollama were made, when the daemon says.
    attempts: int | None = None

    @property
    def final(self) -> bool:
        return self.chunk is None


def decode_reply(frame: bytes) -> Reply:
    """Parse one message from the daemon, or raise :class:`ProtocolError`."""
    try:
        obj = loads(frame)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.INTERNAL, f"reply is not JSON: {exc}") from None
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise ProtocolError(ErrorCode.INTERNAL, "reply is not a protocol v1 object")
    rid = obj.get("id")
    if "chunk" in obj:
        return Reply(id=rid, chunk=obj["chunk"])
    if obj.get("ok") is True:
        return Reply(id=rid, result=obj.get("result") or {})
    error, attempts = decode_error(obj.get("error"))
    return Reply(id=rid, error=error, attempts=attempts)


def decode_error(obj: Any) -> tuple[Error, int | None]:
    """Parse an error object (a final reply's, or a batch item's).

    Returns the error and its optional ``attempts`` count. An unknown code
    becomes ``internal``, so a newer daemon cannot crash an older client.
    """
    err = obj if isinstance(obj, dict) else {}
    try:
        code = ErrorCode(err.get("code"))
    except ValueError:
        code = ErrorCode.INTERNAL
    attempts = err.get("attempts")
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        attempts = None
    retry_after = err.get("retry_after")
    if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) \
            or not 0 <= retry_after <= MAX_TIMEOUT:
        retry_after = None
    return (Error(code, str(err.get("message", "")), bool(err.get("retryable", code.retryable)),
                  None if retry_after is None else float(retry_after)), attempts)
