"""Client: daemon down, time-outs, stray replies, threads and fork."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest

from ollamad_client import (Client, ErrorCode, OllamaClient, RequestTimeout, Unavailable,
                            get_ollama_client, protocol)


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_a_daemon_that_is_down_is_unavailable_within_the_connect_timeout(transport, fake,
                                                                        down_endpoint):
    if transport == "tcp":  # a port that was just free: the fake's, once it is gone
        endpoint = fake.endpoint
        fake.stop()
    else:
        endpoint = down_endpoint
    with Client(endpoint, timeout=30.0, connect_timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="not reachable") as caught:
            client.generate("anyone there?")
        elapsed = time.monotonic() - started
    assert caught.value.retryable and caught.value.code is ErrorCode.UNAVAILABLE
    assert 0.25 < elapsed < 2.0  # the connect timeout, nowhere near the 30 s request timeout


def test_a_request_is_not_queued_for_a_daemon_that_comes_back(make_fake, down_endpoint):
    with Client(down_endpoint, connect_timeout=0.2) as client:
        with pytest.raises(Unavailable):
            client.generate("lost")
        revived = make_fake(down_endpoint)
        assert client.generate("found")["text"] == "echo: found"
    # Had "lost" been queued (IMMEDIATE=0), the new daemon would have got it first.
    assert [r.args["prompt"] for r in revived.received] == ["found"]


def test_the_client_waits_past_the_timeout_for_the_daemons_own_answer(client, fake):
    def handler(request):
        fake.send(request, request.error("timeout", "deadline passed in the daemon"))
        return []
    fake.handler = handler
    with pytest.raises(RequestTimeout, match="deadline passed in the daemon"):
        client.generate("slow", timeout=0.2)


def test_a_time_out_cancels_the_request_and_its_late_reply_is_not_taken(client, fake):
    held = []

    def handler(request):
        if request.args.get("prompt") == "slow":
            held.append(request)
            return []
        if request.op == "cancel":
            return []  # the late reply below stands for the daemon's answers
        # The late answer to the timed-out request arrives on the same socket
        # just before the next request's own answer.
        return [held[0].ok(fake.generation_result("LATE")), *fake.default_handler(request)]
    fake.handler = handler
    started = time.monotonic()
    with pytest.raises(RequestTimeout) as caught:
        client.generate("slow", timeout=0.3)
    elapsed = time.monotonic() - started
    assert caught.value.retryable and 0.3 <= elapsed < 2.0
    (cancel,) = fake.cancels(1)
    assert cancel.args == {"id": held[0].id} and cancel.identity == held[0].identity
    assert client.generate("next")["text"] == "echo: next"
    slow, following = fake.wait_for(2, exclude=("cancel",))
    assert slow.identity == following.identity  # the socket is kept: ids tell replies apart


def test_replies_to_other_ids_and_garbage_are_dropped(client, fake):
    def handler(request):
        stranger = protocol.encode_result("someone-else", {"text": "not yours"})
        return [stranger, b"\xff not json", b'{"v": 99}', request.ok({"text": "yours"})]
    fake.handler = handler
    assert client.request("ping") == {"text": "yours"}
    assert client.request("ping") == {"text": "yours"}
    first, second = fake.wait_for(2)
    assert first.identity == second.identity  # nothing went wrong: same socket


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_a_daemon_that_vanishes_mid_request_is_unavailable_at_once(make_fake, transport):
    fake = make_fake(transport)
    fake.handler = lambda request: fake.VANISH
    with Client(fake.endpoint, timeout=30.0, connect_timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="closed the connection"):
            client.generate("never answered")
        assert time.monotonic() - started < 5.0
        with pytest.raises(Unavailable, match="not reachable"):
            client.ping()


def test_the_same_client_works_with_the_daemon_that_replaces_a_vanished_one(make_fake,
                                                                            down_endpoint):
    first = make_fake(down_endpoint)
    first.handler = lambda request: first.VANISH
    with Client(down_endpoint, timeout=30.0, connect_timeout=2.0) as client:
        with pytest.raises(Unavailable):
            client.generate("never answered")
        first.stop()
        second = make_fake(down_endpoint)
        assert client.generate("fresh")["text"] == "echo: fresh"
    assert [r.args["prompt"] for r in second.received] == ["fresh"]


def test_an_abandoned_stream_leaks_nothing_into_later_requests(client, fake):
    streams = []

    def handler(request):
        if request.message.get("stream"):
            streams.append(request)
            return [request.chunk("first "), request.chunk("second ")]
        # Leftovers of the abandoned stream arrive first, on the new request's socket.
        leftovers = [streams[0].chunk("leftover "), streams[0].ok(fake.generation_result("x"))]
        return [*leftovers, *fake.default_handler(request)]
    fake.handler = handler
    stream = client.stream("tell me everything")
    assert next(stream) == "first "
    stream.close()
    assert list(stream) == [] and stream.result is None
    assert client.generate("after")["text"] == "echo: after"
    with client.stream("again") as second:
        assert next(second) == "first "
    assert client.generate("after again")["text"] == "echo: after again"


def test_a_garbage_collected_stream_is_cancelled(client, fake):
    fake.handler = lambda request: [request.chunk("one ")] if request.op == "generate" else []
    stream = client.stream("forever")
    assert next(stream) == "one "
    del stream
    gc.collect()
    (request,) = fake.wait_for(1, op="generate")
    (cancel,) = fake.cancels(1)  # the daemon is told, and can stop generating
    assert cancel.args == {"id": request.id} and cancel.identity == request.identity


def test_a_stream_that_fails_midway_raises_its_error(client, fake):
    fake.handler = lambda request: [request.chunk("half "),
                                    request.error("backend_error", "runner died", attempts=3)]
    stream = client.stream("x")
    assert next(stream) == "half "
    with pytest.raises(Exception) as caught:
        next(stream)
    assert caught.value.code is ErrorCode.BACKEND_ERROR and caught.value.attempts == 3
    assert list(stream) == []


def test_a_stream_times_out_like_a_call(client, fake):
    fake.handler = lambda request: [request.chunk("slow ")]
    stream = client.stream("x", timeout=0.2)
    assert next(stream) == "slow "
    with pytest.raises(RequestTimeout):
        next(stream)


def test_sixteen_threads_share_one_client_and_each_gets_its_own_answers(client, fake):
    calls_per_thread = 25
    failures: list[str] = []

    def work(n: int) -> None:
        for i in range(calls_per_thread):
            prompt = f"thread {n} call {i}"
            text = client.generate(prompt)["text"]
            if text != f"echo: {prompt}":
                failures.append(f"{prompt!r} got {text!r}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    received = fake.wait_for(16 * calls_per_thread)
    assert len({r.identity for r in received}) == 16  # one socket per thread


@pytest.mark.parametrize("legacy", [False, True], ids=["Client", "get_ollama_client"])
def test_a_forked_child_gets_fresh_sockets_and_works(fake, reap_child, legacy, fresh_singleton):
    client = get_ollama_client(socket=fake.endpoint) if legacy else Client(fake.endpoint)
    generate = client.generate
    assert generate("parent")["text"] == "echo: parent"
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            if legacy:
                child_client = get_ollama_client(socket=fake.endpoint)
                fresh = child_client is not client
                code = 0 if fresh and child_client.generate("child")["text"] == "echo: child" else 3
            else:
                code = 0 if client.generate("child")["text"] == "echo: child" else 3
        finally:
            os._exit(code)
    assert reap_child(pid) == 0
    assert generate("parent again")["text"] == "echo: parent again"
    parent, child, parent_again = fake.wait_for(3)
    assert child.identity not in (parent.identity, parent_again.identity)
    assert parent.identity == parent_again.identity  # the parent's socket survived the fork
    assert child.id.split("-")[1] == str(pid) and parent.id.split("-")[1] == str(os.getpid())
    if isinstance(client, OllamaClient):
        client.shutdown()
    else:
        client.close()


def test_closing_the_client_while_another_thread_waits_lets_that_call_finish(fake):
    fake.handler = lambda request: []  # answered below, after close()
    client = Client(fake.endpoint, timeout=10.0)
    outcome: dict[str, object] = {}

    def wait_for_answer() -> None:
        outcome["result"] = client.generate("in flight")

    waiter = threading.Thread(target=wait_for_answer)
    waiter.start()
    (request,) = fake.wait_for(1)
    client.close()  # must not close the socket under the waiting thread's feet
    fake.send(request, request.ok(fake.generation_result("made it")))
    waiter.join(timeout=10)
    assert not waiter.is_alive() and outcome["result"]["text"] == "made it"
    fake.wait_for_disconnects(1)  # and then that thread closed its socket
    with pytest.raises(Unavailable, match="closed"):
        client.ping()


def test_close_from_another_thread_lets_every_sent_call_finish_and_closes_every_socket(fake):
    """Issue 9: close() lands anywhere in the callers' send/receive cycles.

    A call that reached the daemon must get its answer; a call that did not
    must fail with a plain "closed" error; and every socket must be closed
    once its thread's call is over (while the threads still live, so garbage
    collection cannot hide a lost "close when done").
    """
    rounds, threads_per_round = 40, 8
    identities: set[bytes] = set()
    for round_number in range(rounds):
        client = Client(fake.endpoint, timeout=5.0, connect_timeout=2.0)
        answered = [0] * threads_per_round
        failures: list[BaseException] = []
        release = threading.Event()

        def call_until_closed(index: int) -> None:
            try:
                while True:
                    client.request("ping", {"round": round_number})
                    answered[index] += 1
            except BaseException as exc:  # noqa: BLE001 - every outcome is checked below
                failures.append(exc)
            release.wait(10)  # keep the thread (and its socket) alive until checked

        threads = [threading.Thread(target=call_until_closed, args=(i,))
                   for i in range(threads_per_round)]
        for thread in threads:
            thread.start()
        fake.wait_for(len(fake.received) + 2 * threads_per_round)  # everyone is mid-cycle
        client.close()
        try:
            for thread in threads:
                deadline = time.monotonic() + 10
                while thread.is_alive() and len(failures) < threads_per_round \
                        and time.monotonic() < deadline:
                    thread.join(0.01)
            assert len(failures) == threads_per_round, "a caller hung after close()"
            sent = [r for r in fake.received
                    if r.op == "ping" and r.args.get("round") == round_number]
            assert sum(answered) == len(sent), (
                f"round {round_number}: {len(sent)} calls reached the daemon but only "
                f"{sum(answered)} got their answer: {failures!r}")
            assert all(isinstance(exc, Unavailable) and "is closed" in exc.message
                       for exc in failures), failures
            identities |= {r.identity for r in sent}
            fake.wait_for_disconnects(len(identities))
        finally:
            release.set()
            for thread in threads:
                thread.join(10)
