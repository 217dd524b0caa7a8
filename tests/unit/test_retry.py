"""The retry policy: what is retried, backoff, and the deadline it never overruns."""

import threading
import time

import pytest

from ollamad.retry import OllamaFailure, RetryPolicy, classify_status
from ollamad_client.protocol import ErrorCode


def run(policy, outcomes, deadline_in=60.0, cancel=None):
    calls = []
    waits = []
    cancel = cancel or threading.Event()

    def attempt():
        calls.append(time.monotonic())
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    retrying = policy.retrying(time.monotonic() + deadline_in, cancel)
    retrying.sleep = lambda s: waits.append(s)
    try:
        for try_ in retrying:
            with try_:
                return attempt(), len(calls), waits
    except OllamaFailure as failure:
        return failure, len(calls), waits


def busy():
    return classify_status(503, "server busy, please try again.  maximum pending requests exceeded")


def test_backoff_is_exponential_and_capped():
    policy = RetryPolicy(max_attempts=5, backoff_initial=2, backoff_multiplier=2, backoff_max=8)
    assert [policy.backoff(n) for n in range(1, 5)] == [2, 4, 8, 8]


def test_503_then_success_takes_two_attempts():
    result, attempts, waits = run(RetryPolicy(), [busy(), "ok"])
    assert (result, attempts, waits) == ("ok", 2, [2.0])


@pytest.mark.parametrize("status, message, code", [
    (404, "model 'nope' not found", ErrorCode.MODEL_NOT_FOUND),
    (400, "model is required", ErrorCode.BAD_REQUEST),
    (500, 'option "temperature" must be of type float', ErrorCode.BAD_REQUEST),
])
def test_client_errors_are_not_retried(status, message, code):
    result, attempts, _ = run(RetryPolicy(), [classify_status(status, message), "ok"])
    assert attempts == 1 and result.code is code and result.message == message


@pytest.mark.parametrize("status, message", [
    (500, "llama runner process has terminated: exit status 2"),
    (503, "server busy, please try again.  maximum pending requests exceeded"),
    (502, "bad gateway"), (499, "request canceled"),
])
def test_server_errors_are_retried(status, message):
    assert classify_status(status, message).retryable


def test_attempts_are_limited():
    result, attempts, waits = run(RetryPolicy(max_attempts=3), [busy()] * 5)
    assert attempts == 3 and waits == [2.0, 4.0] and result.code is ErrorCode.BACKEND_ERROR


def test_backoff_never_overruns_the_deadline():
    # 2 s of backoff would end after a 1.5 s deadline: give up after one attempt.
    result, attempts, waits = run(RetryPolicy(), [busy(), "ok"], deadline_in=1.5)
    assert attempts == 1 and waits == []


def test_a_streamed_failure_is_final():
    cut = OllamaFailure(ErrorCode.BACKEND_ERROR, "an error was encountered while running the model",
                        retryable=True, streamed=True)
    _, attempts, _ = run(RetryPolicy(), [cut, "ok"])
    assert attempts == 1


def test_cancel_stops_retrying():
    cancel = threading.Event()
    cancel.set()
    _, attempts, _ = run(RetryPolicy(), [busy(), "ok"], cancel=cancel)
    assert attempts == 1


def test_a_lost_connection_waits_briefly_for_the_restart_not_a_full_backoff():
    refused = OllamaFailure(ErrorCode.UNAVAILABLE, "cannot reach Ollama", retryable=True,
                            connection=True)
    result, attempts, waits = run(RetryPolicy(), [refused, refused, "ok"])
    assert (result, attempts) == ("ok", 3) and waits == [0.25, 0.5]


def cut_by_restart() -> OllamaFailure:
    failure = OllamaFailure(ErrorCode.UNAVAILABLE, "cannot reach Ollama", retryable=True,
                            connection=True)
    failure.forgiven = True
    return failure


def test_attempts_cut_by_our_own_restart_do_not_count():
    # Two attempts cut by restarts, then a real failure, then success: 2 attempts counted.
    outcomes = [cut_by_restart(), cut_by_restart(), busy(), "ok"]
    result, attempts, _ = run(RetryPolicy(max_attempts=2), outcomes)
    assert (result, attempts) == ("ok", 4)
    # Without the forgiveness the budget is spent after two.
    plain = [OllamaFailure(ErrorCode.UNAVAILABLE, "x", retryable=True, connection=True)] * 2
    result, attempts, _ = run(RetryPolicy(max_attempts=2), plain + ["ok"])
    assert isinstance(result, OllamaFailure) and attempts == 2


def test_forgiven_attempts_still_end_at_the_deadline():
    policy = RetryPolicy(max_attempts=1, reconnect_delay=0.25)
    result, attempts, _ = run(policy, [cut_by_restart()] * 100, deadline_in=0.0)
    assert isinstance(result, OllamaFailure) and attempts == 1
