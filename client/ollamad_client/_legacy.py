"""The legacy-compatible API: :class:`OllamaClient` and :func:`get_ollama_client`.

Code written against the old in-process Ollama client keeps working by
changing its import. These methods never raise for request failures: they
return the old result dicts with ``success=False`` and the reason.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ._curve import KeySource
from ._sync import Client, Stream
from .errors import OllamadError

#: How long ``is_available()`` waits for the daemon's health answer.
AVAILABILITY_TIMEOUT = 1.0
#: Deadline of the status/models/metrics queries behind health_check and get_metrics.
QUERY_TIMEOUT = 5.0


#: The old constructor's arguments that the daemon's configuration now decides.
_NO_LONGER_APPLY = {
    "base_url": "the Ollama URL is the daemon's (ollama.url)",
    "max_retries": "retries are the daemon's (max_attempts)",
    "max_workers": "the worker pool is the daemon's (workers)",
}
_warned: set[str] = set()


def _warn_once(argument: str) -> None:
    if argument not in _warned:
        _warned.add(argument)
        warnings.warn(f"OllamaClient({argument}=...) no longer applies: "
                      f"{_NO_LONGER_APPLY[argument]}", DeprecationWarning, stacklevel=3)


class ProcessMetrics:
    """This process's own model calls, counted as the old in-process client counted them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = self._ok = 0
        self._time_sum = 0.0

    def record(self, outcome: Mapping[str, Any]) -> None:
        with self._lock:
            self._total += 1
            self._ok += bool(outcome["success"])
            self._time_sum += float(outcome["response_time"] or 0.0)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            total, ok = self._total, self._ok
            return {"total_requests": total, "successful_requests": ok,
                    "failed_requests": total - ok,
                    "success_rate": round(ok / total, 6) if total else 0.0,
                    "average_response_time": round(self._time_sum / total, 6) if total else 0.0}


#: Shared by every OllamaClient of the process (a forked child starts from zero).
_process_metrics = ProcessMetrics()


def _success(result: Mapping[str, Any], elapsed: float) -> dict[str, Any]:
    outcome = {
        "text": result.get("text", ""),
        "thinking": result.get("thinking", ""),
        "success": True,
        "response_time": result.get("response_time", elapsed),
        "attempts": result.get("attempts", 1),
        "tokens": result.get("tokens", 0),
        "error": None,
        "model": result.get("model"),
        "done_reason": result.get("done_reason"),
        "prompt_tokens": result.get("prompt_tokens", 0),
        "completion_tokens": result.get("completion_tokens", 0),
        "tokens_per_second": result.get("tokens_per_second", 0.0),
        "error_code": None,
    }
    if "message" in result:  # chat
        outcome["message"] = result["message"]
        outcome["tool_calls"] = result.get("tool_calls", [])
    return outcome


def _failure(error: OllamadError, elapsed: float, model: str | None,
             chat: bool = False) -> dict[str, Any]:
    outcome = {
        "text": "", "thinking": "", "success": False, "response_time": elapsed,
        "attempts": error.attempts or 0, "tokens": 0, "error": error.message,
        "model": model, "done_reason": None, "prompt_tokens": 0, "completion_tokens": 0,
        "tokens_per_second": 0.0, "error_code": error.code.value,
    }
    if chat:
        outcome["tool_calls"] = []
    return outcome


def _counted(outcome: dict[str, Any]) -> dict[str, Any]:
    _process_metrics.record(outcome)
    return outcome


#: How good a ``health_check`` status is, to keep the best of several daemons'.
_RANK = {"unhealthy": 0, "degraded": 1, "healthy": 2}


def _serves(client: Client) -> bool:
    """Whether the client's daemon answers ``health`` promptly and is not unhealthy."""
    try:
        health = client.health(timeout=AVAILABILITY_TIMEOUT)
    except OllamadError:
        return False
    return health.get("status") != "unhealthy"


def _has_model(names: Iterable[str], model: str | None) -> bool:
    if not model:
        return False
    wanted = {model, model if ":" in model else f"{model}:latest"}
    return any(name in wanted for name in names)


class OllamaClient:
    """Drop-in replacement for the old in-process Ollama client, served by ollamad.

    ``timeout`` is now each request's whole deadline in seconds (it was the
    old client's per-attempt time-out; the daemon's ``attempt_timeout`` limits
    attempts now): none given, 60 s, or the profile's for a call naming one.
    ``base_url``, ``max_retries`` and ``max_workers`` are accepted for
    compatibility only and warn once each (``DeprecationWarning``): the Ollama
    URL, retries and worker pool are the daemon's configuration. ``model``
    is the model for calls that name none (default: the daemon's,
    ``llama3.1:8b`` unless configured otherwise). ``socket`` is the daemon's
    endpoint (default ``$OLLAMAD_SOCKET`` or
    ``ipc:///run/ollamad/ollamad.sock``), or several daemons' endpoints, shared
    out as by ``Client``; ``request_timeout`` is the same as
    ``timeout`` and wins over it; ``connect_timeout`` how long a call waits
    for the daemon to accept a connection before reporting ``unavailable``;
    ``app`` the app name the daemon accounts this process's requests to
    (default ``$OLLAMAD_APP``, else the program's name); ``server_key`` and
    ``client_key`` the CURVE keys of a tcp endpoint (default
    ``$OLLAMAD_SERVER_KEY`` and ``$OLLAMAD_CLIENT_KEY``, see :class:`Client`).

    Thread-safe. Methods never raise for request failures: results carry
    ``success=False``, ``error`` (the message) and ``error_code``.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None,
                 timeout: float | None = None, max_retries: int | None = None,
                 max_workers: int | None = None, *, socket: str | Sequence[str] | None = None,
                 request_timeout: float | None = None, connect_timeout: float = 1.0,
                 app: str | None = None, server_key: KeySource | None = None,
                 client_key: KeySource | None = None):
        for name, value in (("base_url", base_url), ("max_retries", max_retries),
                            ("max_workers", max_workers)):
            if value is not None:
                _warn_once(name)
        self.base_url = base_url
        self.model = model
        self.max_retries = max_retries
        self.max_workers = max_workers
        deadline = request_timeout if request_timeout is not None else timeout
        #: The underlying exception-raising :class:`Client`, for code moving on to it.
        self.client = Client(socket, model=model, timeout=deadline,
                             connect_timeout=connect_timeout, app=app, server_key=server_key,
                             client_key=client_key)
        #: Each request's deadline in seconds.
        self.timeout = self.request_timeout = self.client.timeout

    @property
    def closed(self) -> bool:
        return self.client.closed

    def is_available(self) -> bool:
        """True when a daemon answers ``health`` promptly and is not unhealthy
        (with several endpoints: any of them)."""
        if _serves(self.client):  # with several endpoints, one that is up
            return True
        return len(self.client.endpoints) > 1 and any(map(_serves, self._each_daemon()))

    def health_check(self) -> dict[str, Any]:
        """``status`` ("healthy" | "degraded" | "unhealthy"), ``healthy``, ``model``,
        ``model_available``, ``available_models``, ``error`` and ``details``
        (the daemon's health result; ``None`` when the daemon is down). With
        several endpoints, the best answer of any daemon."""
        best: dict[str, Any] | None = None
        for client in self._each_daemon():
            report = self._health_of(client)
            if best is None or _RANK[report["status"]] > _RANK[best["status"]]:
                best = report
            if best["healthy"]:
                break
        assert best is not None
        return best

    def _each_daemon(self) -> list[Client]:
        """A client of each endpoint (the client itself when it has one): each
        report must come from one daemon, its ``status`` and ``models`` alike."""
        return [self.client.at(endpoint) for endpoint in self.client.endpoints]

    def _health_of(self, client: Client) -> dict[str, Any]:
        try:
            status = client.status(timeout=QUERY_TIMEOUT)
        except OllamadError as exc:
            return {"status": "unhealthy", "healthy": False, "model": self.model,
                    "model_available": False, "available_models": [], "error": exc.message,
                    "error_code": exc.code.value, "details": None}
        details = status.get("health") or {}
        model = self.model or (status.get("daemon") or {}).get("model")
        problems = [str(reason) for reason in details.get("reasons") or []]
        try:
            listing = client.models(timeout=QUERY_TIMEOUT)
            names = [m["name"] for m in listing.get("models") or [] if isinstance(m, dict)
                     and isinstance(m.get("name"), str)]
        except OllamadError as exc:
            names = []
            problems.append(f"cannot list models: {exc.message}")
        available = _has_model(names, model)
        state = details.get("status")
        if state == "ok":  # docs/protocol.md's name for it; the legacy API says "healthy"
            state = "healthy"
        if state not in ("healthy", "degraded", "unhealthy"):
            state = "unhealthy"
        if state == "healthy" and not available:
            state = "degraded"
            if not problems:
                problems.append(f"model {model!r} is not available in Ollama")
        return {"status": state, "healthy": state == "healthy", "model": model,
                "model_available": available, "available_models": names,
                "error": "; ".join(problems) or None, "error_code": None, "details": details}

    def generate(self, prompt: str, temperature: float = 0.7, max_tokens: int | None = None,
                 system_prompt: str | None = None, **extra: Any) -> dict[str, Any]:
        """Generate a completion; ``extra`` takes ``model``, ``format``,
        ``options``, ``keep_alive``, ``think`` and ``timeout`` (see ``Client.generate``).

        Returns ``text, success, response_time, attempts, tokens, error`` plus
        ``thinking`` (a thinking model's reasoning, else ``""``), ``model,
        done_reason, prompt_tokens, completion_tokens, tokens_per_second,
        error_code``.
        """
        return self._outcome(lambda: self.client.generate(
            prompt, temperature=temperature, max_tokens=max_tokens, system=system_prompt,
            **extra), extra.get("model"))

    def chat(self, messages: Sequence[Mapping[str, Any]], temperature: float = 0.7,
             max_tokens: int | None = None, system_prompt: str | None = None,
             **extra: Any) -> dict[str, Any]:
        """Chat completion; ``extra`` also takes ``tools`` (see ``Client.chat``). The dict
        of :meth:`generate` plus ``tool_calls`` (``[]`` for none) and, on success,
        ``message``."""
        return self._outcome(lambda: self.client.chat(
            messages, temperature=temperature, max_tokens=max_tokens, system=system_prompt,
            **extra), extra.get("model"), chat=True)

    def generate_batch(self, prompts: Sequence[str], temperature: float = 0.7,
                       max_tokens: int | None = None, system_prompt: str | None = None,
                       **extra: Any) -> list[dict[str, Any]]:
        """One :meth:`generate`-style dict per prompt, in prompt order, run by
        the daemon's worker pool."""
        started = time.monotonic()
        items = self.client.batch(prompts, temperature=temperature, max_tokens=max_tokens,
                                  system=system_prompt, **extra)
        elapsed = time.monotonic() - started
        return [_counted(_failure(item, elapsed, extra.get("model") or self.model)
                         if isinstance(item, OllamadError) else _success(item, elapsed))
                for item in items]

    def stream(self, prompt: str, temperature: float = 0.7, max_tokens: int | None = None,
               system_prompt: str | None = None, **extra: Any) -> LegacyStream:
        """Text pieces as they arrive; ``.result`` holds the :meth:`generate` dict after."""
        stream = self.client.stream(prompt, temperature=temperature, max_tokens=max_tokens,
                                    system=system_prompt, **extra)
        return LegacyStream(stream, extra.get("model") or self.model)

    def embed(self, input: str | Sequence[str], model: str | None = None) -> dict[str, Any]:
        """``{"embeddings", "success", "error", "error_code", "response_time", "model"}``."""
        started = time.monotonic()
        try:
            vectors = self.client.embed(input, model=model)
        except OllamadError as exc:
            return _counted({"embeddings": [], "success": False, "error": exc.message,
                             "error_code": exc.code.value,
                             "response_time": time.monotonic() - started,
                             "model": model or self.model})
        return _counted({"embeddings": vectors, "success": True, "error": None,
                         "error_code": None, "response_time": time.monotonic() - started,
                         "model": model or self.model})

    def get_metrics(self) -> dict[str, Any]:
        """This process's own figures, as the old client kept them
        (``total_requests``, ``successful_requests``, ``failed_requests``,
        ``success_rate``, ``average_response_time``: every model call of the
        process's OllamaClients), and under ``host`` the daemon's for every
        app (``None``, with ``error`` and ``error_code``, when it is down; with
        several endpoints, one daemon's: ``client.at(ENDPOINT).metrics()`` asks each)."""
        own = _process_metrics.snapshot()
        try:
            return {**own, "host": self.client.metrics(timeout=QUERY_TIMEOUT)}
        except OllamadError as exc:
            return {**own, "host": None, "error": exc.message, "error_code": exc.code.value}

    def shutdown(self) -> None:
        """Close the sockets (open streams are cancelled, calls in flight finish
        first); idempotent. Later calls report ``unavailable``."""
        self.client.close()

    def __enter__(self) -> OllamaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _outcome(self, run: Callable[[], Mapping[str, Any]], model: str | None,
                 chat: bool = False) -> dict[str, Any]:
        started = time.monotonic()
        try:
            result = run()
        except OllamadError as exc:
            return _counted(_failure(exc, time.monotonic() - started, model or self.model, chat))
        return _counted(_success(result, time.monotonic() - started))


class LegacyStream:
    """Iterator of text pieces that never raises for request failures; after
    exhaustion ``result`` holds the :meth:`OllamaClient.generate` dict.

    Like :class:`~ollamad_client.Stream`, which it wraps: closing it before
    its end, or dropping it unfinished, cancels the generation on the daemon.
    """

    def __init__(self, stream: Stream, model: str | None):
        self._stream = stream
        self._model = model
        self._started = time.monotonic()
        self.result: dict[str, Any] | None = None

    def __iter__(self) -> LegacyStream:
        return self

    def __next__(self) -> str:
        if self.result is not None:
            raise StopIteration
        try:
            return next(self._stream)
        except StopIteration:
            if self._stream.result is not None:  # None: closed before the end
                self.result = _counted(_success(self._stream.result,
                                                time.monotonic() - self._started))
            raise
        except OllamadError as exc:
            self.result = _counted(_failure(exc, time.monotonic() - self._started, self._model))
            raise StopIteration from None

    def close(self) -> None:
        """Stop the stream, cancelling it on the daemon if it is unfinished; idempotent."""
        self._stream.close()


_shared: OllamaClient | None = None
_shared_pid = 0
_shared_lock = threading.Lock()


def get_ollama_client(**kwargs: Any) -> OllamaClient:
    """The process-wide :class:`OllamaClient`, made on first use with ``kwargs``.

    Later calls return the same instance and ignore ``kwargs``. After its
    ``shutdown()``, or in a forked child, a new one is made.
    """
    global _shared, _shared_pid
    with _shared_lock:
        if _shared is None or _shared.closed or _shared_pid != os.getpid():
            _shared, _shared_pid = OllamaClient(**kwargs), os.getpid()
        return _shared


def _after_fork_in_child() -> None:
    # Another parent thread may have held the lock at fork time; and the
    # child's figures are its own.
    global _shared_lock, _process_metrics
    _shared_lock = threading.Lock()
    _process_metrics = ProcessMetrics()


os.register_at_fork(after_in_child=_after_fork_in_child)
