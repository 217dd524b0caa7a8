"""Retry policy: an immutable value, turned into a tenacity ``Retrying`` per request.

Retry only what can succeed on a retry (the classification lives with the
failure, :attr:`OllamaFailure.retryable`). Backoff is exponential
(2 s, 4 s, capped at 8 s by default, as the old in-process client did), and
it never overruns the request's deadline: when the next wait would end past
the deadline, retrying stops and the last failure is the answer.

An attempt cut because ollamad restarted Ollama under it (a wedge, a
crash) is *forgiven*: it does not count against ``max_attempts``, so the
requests caught by a wedge are retried on the new Ollama for as long as
their deadlines allow.

Backoff is for an Ollama that is up but overloaded (503 "server busy"). When
the connection itself failed (Ollama died or is restarting) the wait is a
short ``reconnect_delay`` instead: the next attempt first waits for the
supervisor to report Ollama RUNNING again, within the request's deadline, so
a restart costs the request the restart time, not a 2 s backoff on top.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import tenacity

from ollamad_client.protocol import Error, ErrorCode


class OllamaFailure(Exception):
    """One failed attempt (or the final failure) of a call to Ollama."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool,
                 streamed: bool = False, connection: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        #: The connection to Ollama failed (refused, reset, cut mid-stream).
        self.connection = connection
        #: The attempt was cut because ollamad restarted Ollama (a wedge, a crash): it does
        #: not count against ``max_attempts``, only against the deadline.
        self.forgiven = False
        #: Chunks of this attempt already reached the client: a retry would
        #: repeat them, so the failure is final.
        self.streamed = streamed

    def to_error(self) -> Error:
        return Error.of(self.code, self.message)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    attempt_timeout: float = 10.0
    backoff_initial: float = 2.0
    backoff_multiplier: float = 2.0
    backoff_max: float = 8.0
    reconnect_delay: float = 0.25

    @classmethod
    def from_config(cls, config) -> "RetryPolicy":
        return cls(max_attempts=config.max_attempts, attempt_timeout=config.attempt_timeout,
                   backoff_initial=config.backoff_initial,
                   backoff_multiplier=config.backoff_multiplier,
                   backoff_max=config.backoff_max)

    def backoff(self, failed_attempts: int, connection: bool = False) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (1-based)."""
        base = min(self.reconnect_delay, self.backoff_initial) if connection else self.backoff_initial
        return min(base * self.backoff_multiplier ** (failed_attempts - 1), self.backoff_max)

    def retrying(self, deadline: float, cancel: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> tenacity.Retrying:
        """A tenacity controller for one request with the given monotonic deadline.

        ``cancel`` interrupts a backoff wait (daemon shutdown, request expired).
        """

        def should_retry(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            return (isinstance(exc, OllamaFailure) and exc.retryable and not exc.streamed
                    and not cancel.is_set())

        forgiven = 0

        def should_stop(state: tenacity.RetryCallState) -> bool:
            nonlocal forgiven
            if getattr(state.outcome.exception() if state.outcome else None, "forgiven", False):
                forgiven += 1
            upcoming = state.upcoming_sleep or 0.0
            return (state.attempt_number - forgiven >= self.max_attempts
                    or clock() + upcoming >= deadline or cancel.is_set())

        return tenacity.Retrying(
            retry=should_retry,
            stop=should_stop,
            wait=lambda state: self.backoff(state.attempt_number,
                                            getattr(state.outcome.exception(), "connection", False)),
            sleep=cancel.wait,
            reraise=True,
        )


def classify_status(status: int, message: str) -> OllamaFailure:
    """Turn an HTTP error answer from Ollama into a failure with a retry verdict."""
    if status == 404 and "not found" in message:
        return OllamaFailure(ErrorCode.MODEL_NOT_FOUND, message, retryable=False)
    # Ollama answers a wrongly typed option with a 500, but no retry can fix it.
    if status == 500 and message.startswith('option "'):
        return OllamaFailure(ErrorCode.BAD_REQUEST, message, retryable=False)
    if 400 <= status < 500 and status not in (408, 429, 499):
        return OllamaFailure(ErrorCode.BAD_REQUEST, message, retryable=False)
    return OllamaFailure(ErrorCode.BACKEND_ERROR, message, retryable=True)
