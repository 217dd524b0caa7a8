"""Ollama over HTTP: one ``requests.Session`` per worker thread, retries via tenacity.

Generation always *streams* from Ollama, whatever the client asked for:
each chunk is evidence of progress (the supervisor's hang rule needs it),
and the per-attempt time-out bounds the gap *between* chunks once the first
has come, so a long generation that keeps producing is never cut off while
one that stalls is. Before the first chunk Ollama may be waiting for a slot
or reading a long prompt, which can take long on a busy GPU: that wait is
bounded by the request's deadline and by the supervisor's hang rule, not by
the per-attempt time-out. The model itself is loaded first, on a
connection of its own that no request's time-out cuts
(:mod:`ollamad.ollama.loads`).

Every call can be cut from another thread: while it runs, the request's
:class:`~ollamad.cancellation.Cancellation` holds an interrupt that shuts
its connection down (:mod:`ollamad.interruptible`), so a cancelled or
expired request stops waiting on Ollama at once, and Ollama, whose client
left, stops working for it.

Failures keep Ollama's own message verbatim. What is retried is decided by
:func:`classify_status` and the exception handlers below: connection errors,
time-outs, 5xx (the 503 "server busy" included), runner crashes and streams
cut short by an error line. Never a 4xx, a missing model or a bad option.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

import requests

from ollamad import interruptible
from ollamad.args import GenerationCall
from ollamad.cancellation import Cancellation
from ollamad.ollama.loads import Loads
from ollamad.retry import OllamaFailure, RetryPolicy, classify_status
from ollamad_client.protocol import ErrorCode

#: Connection set-up must be quick on loopback; a slow connect means trouble.
CONNECT_TIMEOUT = 2.0
#: Bound on error bodies we read: Ollama's are one short JSON object.
MAX_ERROR_BODY = 64 * 1024
#: How often a request waiting for Ollama to be RUNNING looks at its cancellation.
CANCEL_CHECK = 0.1


class OllamaEndpoint(Protocol):
    """What the backend needs from whoever owns Ollama (the supervisor)."""

    @property
    def url(self) -> str | None: ...

    @property
    def run_id(self) -> int:
        """Which start of Ollama this is: it changes with every (re)start."""
        ...

    def wait_running(self, deadline: float) -> bool: ...

    def unavailable_reason(self) -> str | None:
        """Why Ollama cannot come back without an operator (FATAL, stopping), else None."""
        ...

    def report_connection_failure(self) -> None: ...


@dataclass
class CallContext:
    """One request as the backend sees it."""

    deadline: float                       # time.monotonic() by which to answer
    cancel: Cancellation = field(default_factory=Cancellation)
    #: Streams pieces to the client: {"text": ...} and/or {"thinking": ...}.
    on_chunk: Callable[[Mapping[str, str]], None] | None = None
    on_progress: Callable[[], None] = lambda: None  # a chunk arrived from Ollama
    #: What the request waits for now (a model load), for the time-out's message; None: done.
    waiting: Callable[[str | None], None] = lambda what: None
    #: HTTP calls made to Ollama (none when the request never got that far).
    attempts: int = 0
    #: ``time.monotonic()`` when the answer's first piece (text or reasoning) came.
    first_token_at: float | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, waiting_for: str = "Ollama") -> None:
        """Raise the final failure if the request was cancelled or its deadline passed."""
        if self.cancel.is_set():
            # Whoever cancelled has answered the client; this only ends the work.
            raise OllamaFailure(ErrorCode.CANCELLED, "the request was cancelled",
                                retryable=False)
        if self.remaining() <= 0:
            raise OllamaFailure(ErrorCode.TIMEOUT, f"the request's deadline passed while "
                                f"waiting for {waiting_for}", retryable=False)


def read_body(response: requests.Response, limit: int) -> bytes:
    """A streamed answer's whole body; ``too_large`` past ``limit`` bytes."""
    body = bytearray()
    for piece in response.iter_content(chunk_size=64 * 1024):
        body += piece
        if len(body) > limit:
            raise OllamaFailure(ErrorCode.TOO_LARGE, f"Ollama's answer is over the "
                                f"{limit}-byte limit on replies", retryable=False)
    return bytes(body)


def _error_message(response: requests.Response) -> str:
    try:
        raw = read_body(response, MAX_ERROR_BODY)
    except OllamaFailure:
        return f"HTTP {response.status_code} from Ollama (with an oversized error body)"
    try:
        body = json.loads(raw)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    except ValueError:
        pass
    text = raw.decode("utf-8", "replace").strip()
    return text or f"HTTP {response.status_code} from Ollama"


def _is_read_timeout(exc: requests.RequestException) -> bool:
    # requests wraps a read time-out met while iterating a streamed body in a
    # ConnectionError; its cause says what really happened.
    return isinstance(exc, requests.Timeout) or "Read timed out" in str(exc)


class OllamaBackend:
    """Calls Ollama with retries. Safe to call from many worker threads."""

    def __init__(self, endpoint: OllamaEndpoint, policy: RetryPolicy, loads: Loads):
        self._endpoint = endpoint
        self.policy = policy  # replaced whole on reload (an immutable value)
        self.loads = loads
        self._local = threading.local()

    # -- plumbing ---------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = interruptible.session()
        return session

    def _base_url(self, ctx: CallContext) -> str:
        while not self._endpoint.wait_running(min(ctx.deadline, time.monotonic() + CANCEL_CHECK)):
            ctx.check("Ollama to be running")
            reason = self._endpoint.unavailable_reason()
            if reason:  # FATAL or stopping: waiting cannot help, and no retry either
                raise OllamaFailure(ErrorCode.UNAVAILABLE, reason, retryable=False)
        url = self._endpoint.url
        if url is None:
            raise OllamaFailure(ErrorCode.UNAVAILABLE, "Ollama's address is not known yet",
                                retryable=True)
        return url

    def _with_retries(self, ctx: CallContext, attempt: Callable[[], Any]) -> Any:
        policy = self.policy
        for try_ in policy.retrying(ctx.deadline, ctx.cancel):
            with try_:
                run = self._endpoint.run_id
                try:
                    return attempt()
                except OllamaFailure as failure:
                    # Cut because the supervisor is restarting Ollama (it is not RUNNING,
                    # or a new one is): not the request's fault, so it is not counted.
                    failure.forgiven = failure.connection and (
                        self._endpoint.run_id != run
                        or not self._endpoint.wait_running(time.monotonic()))
                    raise
        raise AssertionError("unreachable: tenacity reraises the last failure")

    @contextlib.contextmanager
    def _call(self, ctx: CallContext, reading: bool = False) -> Iterator[None]:
        """Around one HTTP exchange: a cancellation cuts it; failures say what broke.

        ``reading``: the answer had begun (a stream cut then is Ollama's
        failure, a ``backend_error``); before it, Ollama could not be reached.
        """
        try:
            with ctx.cancel.interrupting(interruptible.current_slot().interrupt):
                yield
        except requests.RequestException as exc:
            ctx.check()  # cut by a cancellation or the deadline: that is the answer
            if _is_read_timeout(exc):
                raise self._timeout_failure(self.policy.attempt_timeout) from None
            self._endpoint.report_connection_failure()
            if reading:
                raise OllamaFailure(ErrorCode.BACKEND_ERROR, f"the stream from Ollama broke: {exc}",
                                    retryable=True, connection=True) from None
            raise OllamaFailure(ErrorCode.UNAVAILABLE, f"cannot reach Ollama: {exc}",
                                retryable=True, connection=True) from None

    def _post(self, ctx: CallContext, path: str, body: Mapping[str, Any], *,
              first_chunk_waits: bool = False) -> requests.Response:
        """POST and return the streamed answer (status 200), or raise the failure.

        ``first_chunk_waits``: the wait for the answer is bounded by the deadline only
        (a generation: see the module docstring); else also by the per-attempt time-out.
        """
        ctx.check()
        url = self._base_url(ctx) + path
        read_timeout = max(ctx.remaining(), 0.001)
        if not first_chunk_waits:
            read_timeout = min(self.policy.attempt_timeout, read_timeout)
        ctx.attempts += 1
        with self._call(ctx):
            try:
                response = self._session().post(
                    url, json=body, stream=True,
                    timeout=(min(CONNECT_TIMEOUT, read_timeout), read_timeout))
            except requests.Timeout:
                ctx.check()
                raise self._timeout_failure(read_timeout) from None
        if response.status_code != 200:
            try:
                with self._call(ctx, reading=True):
                    message = _error_message(response)
            finally:
                response.close()
            raise classify_status(response.status_code, message)
        return response

    def _timeout_failure(self, seconds: float) -> OllamaFailure:
        return OllamaFailure(ErrorCode.TIMEOUT,
                             f"Ollama sent nothing for {seconds:.1f} s", retryable=True)

    def _lines(self, ctx: CallContext, response: requests.Response) -> Iterator[dict]:
        """The NDJSON objects of a streamed answer, honouring cancel and deadline.

        From the first object on, each next one must come within the per-attempt time-out.
        """
        paced = False
        try:
            with self._call(ctx, reading=True):
                for line in response.iter_lines(chunk_size=None):
                    if not paced:
                        interruptible.current_slot().set_read_timeout(self.policy.attempt_timeout)
                        paced = True
                    ctx.check()
                    if not line:
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        raise OllamaFailure(ErrorCode.BACKEND_ERROR,
                                            f"Ollama sent a line that is not JSON: {line[:200]!r}",
                                            retryable=True) from None
                    ctx.on_progress()
                    yield obj
        finally:
            response.close()

    # -- operations -------------------------------------------------------

    def generate(self, ctx: CallContext, call: GenerationCall) -> dict[str, Any]:
        """Run a generate or chat call; returns the generation result dict."""
        started = time.monotonic()

        def attempt() -> dict[str, Any]:
            self._base_url(ctx)   # Ollama is RUNNING (waited for within the deadline)
            self.loads.ensure(call.body, ctx)
            response = self._post(ctx, call.path, call.body, first_chunk_waits=True)
            answer = call.answer()
            final: dict | None = None
            # Read to the end even after the final chunk: a body left unread
            # makes requests close the connection instead of reusing it.
            try:
                for obj in self._lines(ctx, response):
                    if "error" in obj:
                        raise OllamaFailure(ErrorCode.BACKEND_ERROR, str(obj["error"]),
                                            retryable=True)
                    chunk = answer.add(obj)
                    if chunk and ctx.first_token_at is None:
                        ctx.first_token_at = time.monotonic()
                    if chunk and ctx.on_chunk is not None:
                        ctx.on_chunk(chunk)
                    if obj.get("done"):
                        final = obj
                if final is None:
                    raise OllamaFailure(ErrorCode.BACKEND_ERROR,
                                        "Ollama's stream ended before the final chunk",
                                        retryable=True)
            except OllamaFailure as failure:
                # Pieces the client already has would be repeated by a retry.
                failure.streamed = answer.has_pieces and ctx.on_chunk is not None
                raise
            self.loads.used(call.body)
            return answer.result(final, ctx.attempts, time.monotonic() - started)

        return self._with_retries(ctx, attempt)

    def embed(self, ctx: CallContext, body: Mapping[str, Any], max_answer_bytes: int) -> dict[str, Any]:
        def attempt() -> dict[str, Any]:
            response = self._post(ctx, "/api/embed", body)
            try:
                with self._call(ctx, reading=True):
                    raw = read_body(response, max_answer_bytes)
            finally:
                response.close()
            try:
                data = json.loads(raw)
            except ValueError:
                raise OllamaFailure(ErrorCode.BACKEND_ERROR, "Ollama's answer is not JSON",
                                    retryable=True) from None
            return {"model": data.get("model", body["model"]),
                    "embeddings": data.get("embeddings", []),
                    "prompt_tokens": data.get("prompt_eval_count", 0)}

        return self._with_retries(ctx, attempt)

    def get_json(self, ctx: CallContext, path: str) -> dict[str, Any]:
        """One GET (no retries): for listings such as /api/tags and /api/ps."""
        url = self._base_url(ctx) + path
        timeout = min(self.policy.attempt_timeout, max(ctx.remaining(), 0.001))
        ctx.attempts += 1
        with self._call(ctx):
            response = self._session().get(url, timeout=(min(CONNECT_TIMEOUT, timeout), timeout))
        if response.status_code != 200:
            raise classify_status(response.status_code, f"GET {path}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise OllamaFailure(ErrorCode.BACKEND_ERROR, f"GET {path}: the answer is not JSON",
                                retryable=False) from None
