"""`Loads` against a real stand-in: one load per model and options, never cut by a waiter."""

from __future__ import annotations

import threading
import time

import pytest

from ollamad.ollama.loads import Loads
from ollamad.retry import OllamaFailure
from ollamad_client.protocol import ErrorCode

BODY = {"model": "llama3.1:8b", "options": {"num_ctx": 4096, "temperature": 0.1},
        "keep_alive": "5m"}


class Waiter:
    """What ensure() needs of a request: a deadline, and a note of what it waits for."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.attempts = 0
        self.notes: list[str | None] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, waiting_for: str) -> None:
        if self.remaining() <= 0:
            raise OllamaFailure(ErrorCode.TIMEOUT, f"deadline passed waiting for {waiting_for}",
                                retryable=False)

    def waiting(self, what: str | None) -> None:
        self.notes.append(what)


def generations(standin) -> int:
    return standin.state()["stats"]["requests"].get("POST /api/generate", 0)


def test_one_load_serves_every_waiter_and_outlives_the_impatient(ollama_standin_factory):
    standin = ollama_standin_factory(load_time=1.0)
    run = [1]
    loads = Loads(lambda: standin.url, lambda: run[0], load_timeout=30.0)
    impatient = Waiter(0.2)
    with pytest.raises(OllamaFailure) as gave_up:
        loads.ensure(BODY, impatient)
    assert gave_up.value.code is ErrorCode.TIMEOUT and "load llama3.1:8b" in gave_up.value.message
    assert impatient.notes[0].startswith("Ollama to load") and impatient.notes[-1] is None
    assert loads.loading("llama3") is False and loads.loading("llama3.1:8b") is True
    patient = [Waiter(10.0) for _ in range(3)]
    threads = [threading.Thread(target=loads.ensure, args=(BODY, w)) for w in patient]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert standin.state()["loads"] == {"started": 1, "aborted": 0}
    assert generations(standin) == 1 and not loads.loading("llama3.1:8b")
    # Known loaded: no call to Ollama at all.
    loads.ensure(BODY, Waiter(1.0))
    assert generations(standin) == 1
    # Other runner options, or another start of Ollama: not known any more.
    loads.ensure({**BODY, "options": {"num_ctx": 8192}}, Waiter(10.0))
    run[0] = 2
    loads.ensure(BODY, Waiter(10.0))
    assert generations(standin) == 3


def test_a_failed_load_is_each_waiters_failure_and_counts_as_an_attempt(ollama_standin):
    loads = Loads(lambda: ollama_standin.url, lambda: 1, load_timeout=30.0)
    waiter = Waiter(5.0)
    with pytest.raises(OllamaFailure) as missing:
        loads.ensure({**BODY, "model": "not-installed:1b"}, waiter)
    assert missing.value.code is ErrorCode.MODEL_NOT_FOUND and waiter.attempts == 1
    # A failure is not remembered: the next request asks Ollama again.
    with pytest.raises(OllamaFailure):
        loads.ensure({**BODY, "model": "not-installed:1b"}, Waiter(5.0))
    assert generations(ollama_standin) == 2
