"""Model pulls: the daemon's own operation, on threads of their own, bounded.

Under the shipped unit Ollama's port is the daemon's alone, so operators
pull through the daemon (the admin op ``pull``). A pull takes minutes to
hours, so it never holds a request worker and no request deadline cuts it;
like a load (:mod:`ollamad.ollama.loads`) it runs on a thread of its own:

* at most ``ollama.max_pulls`` at once, and one per model: another pull of a
  model being pulled is refused ``busy`` (with a ``retry_after`` hint) rather
  than joined, so every pull has one client, and that client's leaving (or
  ``cancel``) stops it;
* it streams Ollama's ``POST /api/pull`` and hands each progress object
  (``status``, ``digest``, ``total``, ``completed``) on as it comes;
* every wait is bounded by the pull's *stall* time-out: Ollama RUNNING, the
  connection, the answer's headers, and each next progress line (Ollama
  sends one per blob every 60 ms while it downloads, server/download.go:450,
  but none while it checks the digests of big blobs, so the default is
  generous);
* the pull's :class:`~ollamad.cancellation.Cancellation` (set when its
  exchange finishes: a cancel, the client's connection closing, shutdown)
  shuts the HTTP connection down at once, and Ollama, whose client left,
  cancels the download (server/images.go PullModel runs under the request's
  context; download.go:440-443 cancels a blob nobody waits for).

Ollama reports a failed pull as a last ``{"error": ...}`` line after the
statuses (routes.go streamResponse), or as an error answer when nothing was
sent yet; the text is kept verbatim. A manifest the registry lacks is
``pull model manifest: file does not exist`` (images.go:1025 wrapping
os.ErrNotExist from a 404, images.go:1337-1339): ``model_not_found``; any
other failure of the pull (a registry that cannot be reached, a digest
mismatch) is ``backend_error``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import requests

from ollamad import interruptible
from ollamad.cancellation import Cancellation
from ollamad.ollama import names
from ollamad.retry import OllamaFailure, classify_status
from ollamad_client.protocol import Error, ErrorCode

log = logging.getLogger("ollamad.pulls")

CONNECT_TIMEOUT = 2.0
#: How often a pull waiting for Ollama to be RUNNING looks at its cancellation.
WAIT_SLICE = 0.1
#: Seconds a refused second pull is told to wait before asking again.
RETRY_AFTER = 10.0
#: What a progress object carries (ProgressResponse in api/types.go).
PROGRESS_KEYS = ("status", "digest", "total", "completed")
#: Ollama's text for a manifest the registry does not have.
MISSING_MANIFEST = "file does not exist"


@dataclass(frozen=True)
class PullPolicy:
    max_concurrent: int = 2
    #: Longest wait for Ollama's next sign of progress, in seconds.
    stall_timeout: float = 300.0

    @classmethod
    def from_config(cls, config) -> "PullPolicy":
        return cls(config.ollama.max_pulls, config.ollama.pull_stall_timeout)


class Endpoint(Protocol):
    """What a pull needs of whoever owns Ollama (the supervisor)."""

    @property
    def url(self) -> str | None: ...

    def wait_running(self, deadline: float) -> bool: ...
    def unavailable_reason(self) -> str | None: ...


@dataclass(frozen=True)
class PullRequest:
    model: str
    insecure: bool
    #: Longest wait for each next progress line (or for Ollama to run), in seconds.
    stall: float
    cancel: Cancellation
    on_progress: Callable[[dict[str, Any]], None]
    #: Called once: the final result, or the failure.
    on_done: Callable[[dict[str, Any] | None, OllamaFailure | None], None]


@dataclass
class _Running:
    model: str
    started: float
    status: str = "starting"


class Pulls:
    """The pulls under way. Thread-safe."""

    def __init__(self, endpoint: Endpoint, policy: PullPolicy,
                 clock: Callable[[], float] = time.monotonic):
        self._endpoint = endpoint
        self.policy = policy  # replaced whole on reload
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}

    def start(self, request: PullRequest) -> Error | None:
        """Start the pull on a thread of its own; the ``busy`` error when it may not run now."""
        key = names.key(request.model)
        with self._lock:
            if key in self._running:
                return Error.of(ErrorCode.BUSY, f"{key} is being pulled already (for "
                                f"{self._clock() - self._running[key].started:.0f} s); try again "
                                "when that pull has ended", retry_after=RETRY_AFTER)
            if len(self._running) >= self.policy.max_concurrent:
                return Error.of(ErrorCode.BUSY, f"{len(self._running)} pulls are under way, "
                                f"the most ollama.max_pulls allows; try again when one has "
                                "ended", retry_after=RETRY_AFTER)
            running = self._running[key] = _Running(key, self._clock())
        threading.Thread(target=self._run, args=(key, running, request), daemon=True,
                         name=f"ollamad-pull-{key}").start()
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        now = self._clock()
        with self._lock:
            return [{"model": pull.model, "status": pull.status,
                     "for_s": round(now - pull.started, 3)} for pull in self._running.values()]

    # -- the pull thread ----------------------------------------------------------
    def _run(self, key: str, running: _Running, request: PullRequest) -> None:
        result, failure = None, None
        try:
            result = self._pull(running, request)
        except OllamaFailure as caught:
            failure = caught
        except Exception as exc:  # a bug here must still answer the client
            log.exception("pulling %s failed", key)
            failure = OllamaFailure(ErrorCode.INTERNAL, f"pulling {key}: {exc!r}",
                                    retryable=False)
        finally:
            with self._lock:
                self._running.pop(key, None)
        elapsed = self._clock() - running.started
        if failure is None:
            log.info("pulled %s in %.1f s", key, elapsed)
        elif not request.cancel.is_set():
            log.warning("pull of %s failed after %.1f s: %s", key, elapsed, failure.message)
        else:
            log.info("pull of %s stopped after %.1f s: its client left or cancelled",
                     key, elapsed)
        request.on_done(result, failure)

    def _pull(self, running: _Running, request: PullRequest) -> dict[str, Any]:
        url = self._url(request)
        body = {"model": request.model, "insecure": request.insecure, "stream": True}
        with interruptible.session() as session, \
                request.cancel.interrupting(interruptible.current_slot().interrupt):
            try:
                response = session.post(url + "/api/pull", json=body, stream=True,
                                        timeout=(CONNECT_TIMEOUT, request.stall))
                with response:
                    if response.status_code != 200:
                        raise _pull_failure(_error_text(response), response.status_code)
                    return self._follow(running, request, response)
            except requests.RequestException as exc:
                raise _failure(exc, request) from None

    def _follow(self, running: _Running, request: PullRequest,
                response: requests.Response) -> dict[str, Any]:
        """Relay the progress lines; the result once Ollama says ``success``."""
        for line in response.iter_lines(chunk_size=None):
            if request.cancel.is_set():
                raise _cancelled()
            if not line:
                continue
            try:
                progress = json.loads(line)
            except ValueError:
                raise OllamaFailure(ErrorCode.BACKEND_ERROR, f"Ollama sent a pull line that is "
                                    f"not JSON: {line[:200]!r}", retryable=True) from None
            if not isinstance(progress, dict):
                continue
            if "error" in progress:
                raise _pull_failure(str(progress["error"]))
            relayed = {k: progress[k] for k in PROGRESS_KEYS if k in progress}
            running.status = str(relayed.get("status", running.status))
            request.on_progress(relayed)
        if running.status != "success":
            raise OllamaFailure(ErrorCode.BACKEND_ERROR, "Ollama's pull stream ended before "
                                f"success (last status: {running.status})", retryable=True)
        return {"model": request.model, "status": "success"}

    def _url(self, request: PullRequest) -> str:
        """Ollama's address once it is RUNNING, waited for within the stall time-out."""
        deadline = self._clock() + request.stall
        while not self._endpoint.wait_running(min(deadline, self._clock() + WAIT_SLICE)):
            if request.cancel.is_set():
                raise _cancelled()
            reason = self._endpoint.unavailable_reason()
            if reason:
                raise OllamaFailure(ErrorCode.UNAVAILABLE, reason, retryable=False)
            if self._clock() >= deadline:
                raise OllamaFailure(ErrorCode.UNAVAILABLE, f"Ollama is not running (waited "
                                    f"{request.stall:g} s for it)", retryable=True)
        url = self._endpoint.url
        if url is None:
            raise OllamaFailure(ErrorCode.UNAVAILABLE, "Ollama's address is not known yet",
                                retryable=True)
        return url


def _pull_failure(message: str, status: int | None = None) -> OllamaFailure:
    """Ollama's error for a pull: an error line (``status`` None) or an error answer."""
    if message.endswith(MISSING_MANIFEST):
        return OllamaFailure(ErrorCode.MODEL_NOT_FOUND, message, retryable=False)
    if status is not None:
        return classify_status(status, message)
    return OllamaFailure(ErrorCode.BACKEND_ERROR, message, retryable=True)


def _cancelled() -> OllamaFailure:
    # Whoever cancelled has answered the client already; this only ends the work.
    return OllamaFailure(ErrorCode.CANCELLED, "the pull was cancelled", retryable=False)


def _failure(exc: requests.RequestException, request: PullRequest) -> OllamaFailure:
    if request.cancel.is_set():
        return _cancelled()
    if isinstance(exc, requests.Timeout) or "Read timed out" in str(exc):
        return OllamaFailure(ErrorCode.TIMEOUT, f"Ollama sent no progress for "
                             f"{request.stall:g} s (ollama.pull_stall_timeout)", retryable=True)
    return OllamaFailure(ErrorCode.UNAVAILABLE, f"cannot reach Ollama: {exc}", retryable=True,
                         connection=True)


def _error_text(response: requests.Response) -> str:
    raw = response.raw.read(64 * 1024, decode_content=True) or b""
    try:
        body: Mapping[str, Any] = json.loads(raw)
        if isinstance(body.get("error"), str):
            return body["error"]
    except (ValueError, AttributeError):
        pass
    return raw.decode("utf-8", "replace").strip() or f"HTTP {response.status_code} from Ollama"
