"""Client: every way of giving up on a request sends the daemon a ``cancel``
for it, over the socket the request went over."""

from __future__ import annotations

import gc
import signal
import threading

import pytest

from ollamad_client import Client, OllamaClient, RequestTimeout, Unavailable


def holding_generations(fake, first_chunk: str | None = "one "):
    """A handler that answers a generation with at most one chunk and then holds it."""
    def handler(request):
        if request.op in ("generate", "chat"):
            return [request.chunk(first_chunk)] if first_chunk and request.message["stream"] \
                else []
        return fake.default_handler(request)
    return handler


def assert_cancelled(fake, request) -> None:
    """``request`` got exactly one cancel, naming its id, from the same socket."""
    (cancel,) = fake.cancels(1)
    assert cancel.args == {"id": request.id}
    assert cancel.identity == request.identity
    assert cancel.id != request.id  # a request of its own


def read_one_then_end(stream, how: str) -> None:
    """Take the first piece, then leave the stream by ``how``: close, with, garbage collection."""
    if how == "with":
        with stream:
            assert next(stream) == "one "
        return
    assert next(stream) == "one "
    if how == "close":
        stream.close()
    else:
        del stream
        gc.collect()


@pytest.mark.parametrize("how", ["close", "with", "garbage collection"])
def test_a_stream_ended_early_is_cancelled(client, fake, how):
    fake.handler = holding_generations(fake)
    read_one_then_end(client.stream("forever"), how)
    (request,) = fake.wait_for(1, op="generate")
    assert_cancelled(fake, request)
    # The daemon's answers to the cancel (the stream's "cancelled" reply and
    # {"cancelled": true}) come on the same socket, and must not confuse it.
    fake.handler = fake.default_handler
    assert client.generate("after")["text"] == "echo: after"


def test_a_finished_stream_is_not_cancelled(client, fake):
    with client.stream("a b") as stream:
        assert list(stream) == ["echo: ", "a ", "b "]
    del stream
    gc.collect()
    client.ping()
    assert [r.op for r in fake.wait_for(2)] == ["generate", "ping"]


def test_a_call_that_times_out_in_the_client_is_cancelled(client, fake):
    fake.handler = holding_generations(fake)
    with pytest.raises(RequestTimeout):
        client.generate("never answered", timeout=0.1)
    assert_cancelled(fake, fake.wait_for(1, op="generate")[0])


@pytest.fixture
def interrupt_on_arrival(fake):
    """Deliver SIGINT to the main thread (a KeyboardInterrupt there) when a generation arrives."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    holding = holding_generations(fake)

    def handler(request):
        if request.op in ("generate", "chat"):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        return holding(request)
    fake.handler = handler
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("kind", ["call", "stream"])
def test_an_interrupted_wait_cancels_the_request(client, fake, interrupt_on_arrival, kind):
    with pytest.raises(KeyboardInterrupt):
        if kind == "call":
            client.generate("interrupt me", timeout=30.0)
        else:
            stream = client.stream("interrupt me", timeout=30.0)
            while True:  # the first chunk may come before the interrupt does
                next(stream)
    (request,) = fake.wait_for(1, op="generate")
    assert_cancelled(fake, request)
    fake.handler = fake.default_handler
    assert client.generate("still fine")["text"] == "echo: still fine"
    assert fake.wait_for(1, op="generate")[0].identity == request.identity


def test_closing_the_client_cancels_open_streams_before_closing_the_socket(fake):
    fake.handler = holding_generations(fake)
    client = Client(fake.endpoint, timeout=5.0)
    stream = client.stream("forever")
    assert next(stream) == "one "
    client.close()
    assert_cancelled(fake, fake.wait_for(1, op="generate")[0])
    fake.wait_for_disconnects(1)
    assert list(stream) == [] and stream.result is None


def test_closing_the_client_ends_a_stream_another_thread_is_waiting_on(fake):
    fake.handler = holding_generations(fake)
    client = Client(fake.endpoint, timeout=30.0)
    stream = client.stream("forever")
    assert next(stream) == "one "
    rest: list[list[str]] = []
    reader = threading.Thread(target=lambda: rest.append(list(stream)))
    reader.start()
    client.close()
    reader.join(10)
    assert not reader.is_alive() and rest == [[]]
    assert_cancelled(fake, fake.wait_for(1, op="generate")[0])
    fake.wait_for_disconnects(1)
    with pytest.raises(Unavailable, match="closed"):
        client.ping()


@pytest.mark.parametrize("how", ["close", "garbage collection"])
def test_a_legacy_stream_ended_early_is_cancelled(fake, how):
    fake.handler = holding_generations(fake)
    legacy = OllamaClient(socket=fake.endpoint, request_timeout=5.0)
    try:
        read_one_then_end(legacy.stream("forever"), how)
        assert_cancelled(fake, fake.wait_for(1, op="generate")[0])
    finally:
        legacy.shutdown()


def test_a_legacy_call_that_times_out_is_cancelled(fake):
    fake.handler = holding_generations(fake)
    legacy = OllamaClient(socket=fake.endpoint)
    try:
        result = legacy.generate("never answered", timeout=0.1)
    finally:
        legacy.shutdown()
    assert result["success"] is False and result["error_code"] == "timeout"
    assert_cancelled(fake, fake.wait_for(1, op="generate")[0])
