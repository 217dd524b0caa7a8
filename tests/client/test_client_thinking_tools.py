"""think= and tools= out, thinking and tool_calls back: Client, AsyncClient, OllamaClient."""

from __future__ import annotations

import asyncio

import pytest

from ollamad_client import AsyncClient, OllamaClient, protocol

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
CALLS = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
#: A thinking model's stream: reasoning first, one chunk with both, then text.
CHUNKS = [{"thinking": "Hmm, "}, {"thinking": "blue.", "text": "Rayleigh"},
          {"text": " scattering."}, {"future_piece": "x"}]


def thinking_handler(fake):
    def handler(request):
        if request.op not in ("generate", "chat"):
            return fake.default_handler(request)
        result = fake.generation_result("Rayleigh scattering.", thinking="Hmm, blue.")
        if request.op == "chat":
            result["tool_calls"] = CALLS
            result["message"] = {"role": "assistant", "content": result["text"],
                                 "thinking": "Hmm, blue.", "tool_calls": CALLS}
        frames = [protocol.encode_chunk(request.id, chunk) for chunk in CHUNKS] \
            if request.message.get("stream") else []
        return [*frames, request.ok(result)]
    return handler


def test_think_and_tools_are_sent_as_given(client, fake):
    client.generate("Why?", think="high")
    client.chat([{"role": "user", "content": "Weather?"}], tools=(WEATHER,), think=False)
    list(client.stream_chat([{"role": "user", "content": "Weather?"}], tools=[WEATHER]))
    generate, chat, stream_chat = fake.wait_for(3)
    assert generate.args == {"prompt": "Why?", "think": "high"}
    assert chat.args == {"messages": [{"role": "user", "content": "Weather?"}],
                         "tools": [WEATHER], "think": False}
    assert stream_chat.args["tools"] == [WEATHER] and stream_chat.message["stream"] is True


@pytest.mark.parametrize("method", ["generate", "stream", "batch"])
def test_tools_are_for_chats_only(client, fake, method):
    with pytest.raises(TypeError, match="tools"):
        getattr(client, method)(["x"] if method == "batch" else "x", tools=[WEATHER])


def test_a_stream_yields_the_answer_text_and_chunks_the_reasoning_too(client, fake):
    fake.handler = thinking_handler(fake)
    text = client.stream("Why?")
    chunks = client.stream_chat([{"role": "user", "content": "Weather?"}])
    assert list(text) == ["Rayleigh", " scattering."]
    assert list(chunks.chunks()) == CHUNKS[:3]  # a piece this client does not know is left out
    assert text.result["thinking"] == "Hmm, blue."
    assert chunks.result["tool_calls"] == chunks.result["message"]["tool_calls"] == CALLS


def test_async_streams_chunk_the_reasoning_too(fake):
    fake.handler = thinking_handler(fake)

    async def main():
        async with AsyncClient(fake.endpoint) as client:
            text = client.stream("Why?", think=True)
            chunks = client.stream_chat([{"role": "user", "content": "Weather?"}],
                                        tools=[WEATHER])
            return ([piece async for piece in text], [chunk async for chunk in chunks.chunks()],
                    chunks.result)
    pieces, chunks, result = asyncio.run(asyncio.wait_for(main(), 60))
    assert pieces == ["Rayleigh", " scattering."] and chunks == CHUNKS[:3]
    assert result["tool_calls"] == CALLS
    assert fake.wait_for(2)[1].args["tools"] == [WEATHER]


def test_the_legacy_dicts_carry_thinking_and_for_chats_tool_calls(fake):
    fake.handler = thinking_handler(fake)
    legacy = OllamaClient(socket=fake.endpoint, request_timeout=5.0)
    try:
        thought = legacy.generate("Why?", think=True)
        chat = legacy.chat([{"role": "user", "content": "Weather?"}], tools=[WEATHER])
        stream = legacy.stream("Why?")
        pieces = list(stream)
        fake.handler = lambda request: [request.error("bad_request", "no thinking here")]
        failed_generate = legacy.generate("Why?", think=True)
        failed_chat = legacy.chat([{"role": "user", "content": "Weather?"}], tools=[WEATHER])
    finally:
        legacy.shutdown()
    assert fake.wait_for(1)[0].args["think"] is True
    assert thought["thinking"] == "Hmm, blue." and thought["text"] == "Rayleigh scattering."
    assert chat["tool_calls"] == chat["message"]["tool_calls"] == CALLS
    assert pieces == ["Rayleigh", " scattering."] and stream.result["thinking"] == "Hmm, blue."
    assert failed_generate["thinking"] == "" and "tool_calls" not in failed_generate
    assert failed_chat["tool_calls"] == [] and failed_chat["success"] is False
