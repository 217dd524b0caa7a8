"""AsyncClient: the same calls and the same reliability rules, awaited."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from ollamad_client import (AsyncClient, ErrorCode, OllamadError, RequestTimeout, TooLarge,
                            Unavailable, error_for)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_calls_send_the_same_requests_as_the_blocking_client(fake):
    async def calls(client):
        return [await client.generate("Hi", temperature=0.2, max_tokens=5, timeout=9.0),
                await client.chat([{"role": "user", "content": "yo"}], system="Be kind."),
                await client.embed(["ab"], model="nomic-embed-text"),
                await client.models(), await client.health(), await client.status(),
                await client.metrics(), await client.gpu(), await client.ping(),
                await client.restart("why not"), await client.request("status", {"x": 1})]

    async def main():
        async with AsyncClient(fake.endpoint, model="llama3.1:8b") as client:
            return await calls(client)
    results = run(main())
    requests = fake.wait_for(11)
    assert [r.op for r in requests] == ["generate", "chat", "embed", "models", "health", "status",
                                        "metrics", "gpu", "ping", "restart", "status"]
    assert requests[0].args == {"prompt": "Hi", "temperature": 0.2, "max_tokens": 5,
                                "model": "llama3.1:8b"}
    assert requests[0].message["timeout"] == 9.0
    assert requests[1].args["system"] == "Be kind."
    assert requests[9].args == {"reason": "why not"}
    assert results[0]["text"] == "echo: Hi"
    assert results[1]["message"] == {"role": "assistant", "content": "echo: yo"}
    assert results[2] == [[2.0, 0.5]]
    assert results[8] == {"op": "ping", "args": {}}


def test_streams_are_async_iterators_with_a_result(fake):
    async def main():
        client = AsyncClient(fake.endpoint)
        stream = client.stream("one two")
        pieces = [piece async for piece in stream]
        chat = client.stream_chat([{"role": "user", "content": "three"}])
        chat_pieces = [piece async for piece in chat]
        return pieces, stream.result, chat_pieces, chat.result
    pieces, result, chat_pieces, chat_result = run(main())
    assert pieces == ["echo: ", "one ", "two "] and result["text"] == "echo: one two"
    assert "".join(chat_pieces).strip() == chat_result["message"]["content"] == "echo: three"
    assert all(r.message["stream"] for r in fake.wait_for(2))


def test_batch_splits_and_keeps_order(fake):
    def handler(request):
        if request.op == "batch" and request.args["prompts"][0] == "p256":
            return [request.error("shutting_down", "bye")]
        return fake.default_handler(request)
    fake.handler = handler
    results = run(AsyncClient(fake.endpoint).batch([f"p{i}" for i in range(300)]))
    assert [r["text"] for r in results[:256]] == [f"echo: p{i}" for i in range(256)]
    assert all(isinstance(r, OllamadError) and r.code is ErrorCode.SHUTTING_DOWN
               for r in results[256:])


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_error_code_raises_its_class(fake, code):
    fake.handler = lambda request: [request.error(code.value, "nope")]
    with pytest.raises(OllamadError) as caught:
        run(AsyncClient(fake.endpoint).generate("x"))
    assert type(caught.value) is type(error_for(code, "")) and caught.value.message == "nope"


def test_many_concurrent_coroutines_each_get_their_own_answer_over_one_socket(fake):
    async def main():
        client = AsyncClient(fake.endpoint)
        prompts = [f"coroutine {i}" for i in range(64)]
        results = await asyncio.gather(*(client.generate(p) for p in prompts))
        return prompts, results
    prompts, results = run(main())
    assert [r["text"] for r in results] == [f"echo: {p}" for p in prompts]
    assert len({r.identity for r in fake.wait_for(64)}) == 1


def test_concurrent_streams_share_one_socket_and_get_their_own_pieces(fake):
    async def drain(stream):
        return [piece async for piece in stream], stream.result["text"]

    async def main():
        client = AsyncClient(fake.endpoint)
        return await asyncio.gather(*(drain(client.stream(f"s{i} x y")) for i in range(16)),
                                    client.generate("a call too"))
    *streamed, called = run(main())
    assert streamed == [(["echo: ", f"s{i} ", "x ", "y "], f"echo: s{i} x y") for i in range(16)]
    assert called["text"] == "echo: a call too"
    assert len({r.identity for r in fake.wait_for(17)}) == 1


def test_a_daemon_that_is_down_is_unavailable_within_the_connect_timeout(down_endpoint):
    client = AsyncClient(down_endpoint, timeout=30.0, connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="not reachable"):
        run(client.generate("anyone?"))
    assert time.monotonic() - started < 2.0


def test_a_daemon_that_vanishes_mid_request_is_unavailable_at_once(fake):
    fake.handler = lambda request: fake.VANISH
    started = time.monotonic()
    with pytest.raises(Unavailable, match="closed the connection"):
        run(AsyncClient(fake.endpoint, timeout=30.0).generate("never answered"))
    assert time.monotonic() - started < 5.0


def test_a_time_out_cancels_the_request_and_drops_the_late_reply(fake):
    held = []

    def handler(request):
        if request.args.get("prompt") == "slow":
            held.append(request)
            return []
        if request.op == "cancel":
            return []
        return [held[0].ok({"text": "LATE"}), *fake.default_handler(request)]
    fake.handler = handler

    async def main():
        client = AsyncClient(fake.endpoint)
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.generate("slow", timeout=0.2)
        elapsed = time.monotonic() - started
        fake.send(held[0], held[0].ok({"text": "LATE"}))
        return elapsed, await client.generate("next")
    elapsed, result = run(main())
    assert 0.2 <= elapsed < 2.0 and result["text"] == "echo: next"
    slow, following = fake.wait_for(2, exclude=("cancel",))
    (cancel,) = fake.cancels(1)
    assert cancel.args == {"id": slow.id} and cancel.identity == slow.identity
    assert slow.identity == following.identity  # one socket per loop: ids tell replies apart


def holding_generations(fake):
    """Generations get at most one chunk and are then held; other ops are answered."""
    def handler(request):
        if request.op == "generate":
            return [request.chunk("first ")] if request.message["stream"] else []
        return fake.default_handler(request)
    return handler


def assert_cancelled(fake, request):
    (cancel,) = fake.cancels(1)
    assert cancel.args == {"id": request.id} and cancel.identity == request.identity


@pytest.mark.parametrize("reading", [True, False], ids=["the reader", "a waiter"])
def test_a_cancelled_task_cancels_its_request(fake, reading):
    fake.handler = holding_generations(fake)

    async def main():
        client = AsyncClient(fake.endpoint)
        held = [asyncio.ensure_future(client.generate(f"wait {i}")) for i in range(2)]
        await asyncio.get_running_loop().run_in_executor(None, fake.wait_for, 2)
        victim = held[0] if reading else held[1]  # the first to wait reads for both
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert_cancelled(fake, fake.wait_for(2, op="generate")[0 if reading else 1])
        # The survivor still hears its answer, whoever reads the socket now.
        survivor = held[1] if reading else held[0]
        request = fake.wait_for(2, op="generate")[1 if reading else 0]
        fake.send(request, request.ok({"text": "made it"}))
        return await survivor
    assert run(main()) == {"text": "made it"}


@pytest.mark.parametrize("how", ["aclose", "async with"])
def test_a_stream_closed_early_is_cancelled(fake, how):
    fake.handler = holding_generations(fake)

    async def main():
        client = AsyncClient(fake.endpoint)
        if how == "aclose":
            stream = client.stream("go")
            assert await stream.__anext__() == "first "
            await stream.aclose()
        else:
            async with client.stream("go") as stream:
                assert await stream.__anext__() == "first "
        return [piece async for piece in stream]
    assert run(main()) == []
    assert_cancelled(fake, fake.wait_for(1, op="generate")[0])


def test_an_abandoned_stream_is_cancelled_and_leaks_nothing(fake):
    streams = []

    def handler(request):
        if request.message.get("stream"):
            streams.append(request)
            return [request.chunk("first ")]
        return [streams[0].chunk("leftover "), *fake.default_handler(request)]
    fake.handler = handler

    async def main():
        client = AsyncClient(fake.endpoint)
        async for piece in client.stream("go"):
            assert piece == "first "
            break
        gc.collect()
        return await client.generate("after")
    assert run(main())["text"] == "echo: after"
    assert_cancelled(fake, streams[0])


def test_closing_the_client_closes_open_streams_and_refuses_calls(fake):
    fake.handler = lambda request: [request.chunk("one ")]

    async def main():
        client = AsyncClient(fake.endpoint)
        stream = client.stream("x")
        assert await stream.__anext__() == "one "
        client.close()
        assert [piece async for piece in stream] == []
        with pytest.raises(Unavailable, match="closed"):
            await client.ping()
    run(main())
    assert_cancelled(fake, fake.wait_for(1)[0])
    fake.wait_for_disconnects(1)


def test_an_oversized_request_is_refused_without_sending(fake):
    async def main():
        client = AsyncClient(fake.endpoint, max_message_bytes=500)
        with pytest.raises(TooLarge):
            await client.generate("x" * 1000)
        return await client.ping()
    assert run(main())["op"] == "ping"
    assert [r.op for r in fake.wait_for(1)] == ["ping"]


def test_one_client_works_across_event_loops(fake):
    client = AsyncClient(fake.endpoint)
    assert run(client.ping())["op"] == "ping"
    assert run(client.generate("again"))["text"] == "echo: again"


def test_batch_splits_by_the_max_batch_the_daemon_reports_asked_once(fake):
    def handler(request):
        if request.op == "ping":
            return [request.ok({"protocol": 1, "max_batch": 3})]
        return fake.default_handler(request)
    fake.handler = handler

    async def main():
        client = AsyncClient(fake.endpoint)
        return await client.batch(["a", "b", "c", "d"]), await client.batch(["e", "f"])
    first, second = run(main())
    assert [r["text"] for r in first + second] == [f"echo: {p}" for p in "abcdef"]
    assert [len(r.args["prompts"]) for r in fake.wait_for(3, op="batch")] == [3, 1, 2]
    assert [r.op for r in fake.received].count("ping") == 1


def test_a_stream_collected_after_its_loop_closed_is_still_cancelled(fake):
    fake.handler = holding_generations(fake)

    async def main():
        client = AsyncClient(fake.endpoint)
        stream = client.stream("go")
        assert await stream.__anext__() == "first "
        return client, stream
    client, stream = run(main())
    del stream
    gc.collect()
    assert_cancelled(fake, fake.wait_for(1, op="generate")[0])
    client.close()
    fake.wait_for_disconnects(1)
