"""Client: a thread's calls and streams share one socket, replies told apart by id."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest

from ollamad_client import Unavailable


def interleaving_streams(fake, count: int, pieces: int = 3):
    """Answer each stream with its first chunk at once; when ``count`` are
    open, send everyone's remaining chunks and final replies interleaved,
    last stream first."""
    streams = []

    def handler(request):
        if not request.message.get("stream"):
            return fake.default_handler(request)
        streams.append(request)
        frames = [request.chunk(f"{request.args['prompt']}/0 ")]
        if len(streams) == count:
            for piece in range(1, pieces):
                frames += [s.chunk(f"{s.args['prompt']}/{piece} ") for s in reversed(streams)]
            frames += [s.ok(fake.generation_result(s.args["prompt"])) for s in reversed(streams)]
        return frames
    return handler


def test_concurrent_streams_in_one_thread_share_one_socket(client, fake):
    count = 12
    fake.handler = interleaving_streams(fake, count)
    streams = [client.stream(f"s{i}") for i in range(count)]
    firsts = [next(stream) for stream in streams]  # every stream open at once
    rests = [list(stream) for stream in streams]
    assert firsts == [f"s{i}/0 " for i in range(count)]
    assert rests == [[f"s{i}/1 ", f"s{i}/2 "] for i in range(count)]
    assert [stream.result["text"] for stream in streams] == [f"s{i}" for i in range(count)]
    assert len({r.identity for r in fake.wait_for(count)}) == 1  # one socket, not twelve
    assert client.generate("and a call")["text"] == "echo: and a call"
    assert len({r.identity for r in fake.wait_for(count + 1)}) == 1


def test_a_call_between_a_streams_chunks_gets_its_own_answer(client, fake):
    streams = []

    def handler(request):
        if request.message.get("stream"):
            streams.append(request)
            return [request.chunk("first ")]
        # The stream's next chunks arrive before the call's answer.
        return [streams[0].chunk("second "), *fake.default_handler(request),
                streams[0].chunk("third "), streams[0].ok(fake.generation_result("done"))]
    fake.handler = handler
    stream = client.stream("story")
    assert next(stream) == "first "
    assert client.generate("meanwhile")["text"] == "echo: meanwhile"
    assert list(stream) == ["second ", "third "] and stream.result["text"] == "done"


def test_a_stream_iterated_by_another_thread_stays_correct(client, fake):
    streams = []

    def handler(request):
        if request.message.get("stream"):
            streams.append(request)
            return [request.chunk("a ")]
        # While this thread waits for "slow", the other thread waits for the
        # stream on the same socket: whichever reads, each gets its own.
        stream = streams[0]
        return [stream.chunk("b "), stream.chunk("c "), stream.ok(fake.generation_result("abc")),
                *fake.default_handler(request)]
    fake.handler = handler
    stream = client.stream("story")
    assert next(stream) == "a "
    rest: list[list[str]] = []
    other = threading.Thread(target=lambda: rest.append(list(stream)))
    other.start()
    assert client.generate("slow")["text"] == "echo: slow"
    other.join(10)
    assert not other.is_alive()
    assert rest == [["b ", "c "]] and stream.result["text"] == "abc"
    assert len({r.identity for r in fake.wait_for(2)}) == 1


def test_a_daemon_that_vanishes_fails_every_open_request_at_once(client, fake):
    def handler(request):
        if request.message.get("stream"):
            return [request.chunk("one ")]
        return fake.VANISH
    fake.handler = handler
    streams = [client.stream(f"s{i}") for i in range(3)]
    assert [next(stream) for stream in streams] == ["one "] * 3
    started = time.monotonic()
    with pytest.raises(Unavailable, match="closed the connection"):
        client.generate("the last straw")
    for stream in streams:
        with pytest.raises(Unavailable, match="closed the connection"):
            next(stream)
    assert time.monotonic() - started < 5.0


def test_a_forked_child_never_touches_a_stream_of_its_parent(client, fake, reap_child):
    fake.handler = interleaving_streams(fake, 1)
    stream = client.stream("parent's")
    assert next(stream) == "parent's/0 "
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            try:
                next(stream)
                code = 2  # must not read the parent's socket
            except Unavailable:
                del stream
                gc.collect()  # nor send a cancel on it
                code = 0
        finally:
            os._exit(code)
    assert reap_child(pid) == 0
    assert list(stream) == ["parent's/1 ", "parent's/2 "] and stream.result is not None
    assert [r.op for r in fake.received] == ["generate"]
