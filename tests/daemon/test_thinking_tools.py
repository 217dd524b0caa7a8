"""think, thinking, tools and tool_calls through the daemon, and keep_alive by Go's rules.

The stand-in behaves like Ollama v0.33 here (tests/standin/test_thinking_tools.py):
a model with the `thinking` capability reasons first unless told not to, in
`thinking` / `message.thinking`; a chat with `tools` answers with
`message.tool_calls` in a line of its stream; the next chat, given the
tool's answer, answers in words (so an agent loop ends).
"""

from __future__ import annotations

import asyncio

import pytest

from ollamad_client import AsyncClient, BadRequest, OllamadError

THINKER = "qwen3:0.6b"      # capabilities: completion, tools, thinking
CHAT = "llama3.1:8b"        # completion, tools (the daemon's default model)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}}}}}
ASKED = [{"role": "user", "content": "What is the weather in Paris?"}]


def texts(chunks, key):
    return "".join(chunk.get(key, "") for chunk in chunks)


def test_a_chat_with_tools_returns_the_tool_calls_and_an_agent_loop_ends_in_words(shared_daemon):
    daemon = shared_daemon
    # A thinking model: its message carries thinking as well as tool_calls back.
    with daemon.client(model=THINKER) as client:
        called = client.chat(ASKED, tools=[WEATHER])
        stream = client.stream_chat(ASKED, tools=[WEATHER])
        streamed_text = list(stream)
        [call] = called["tool_calls"]
        answer = {"role": "tool", "tool_name": "get_weather", "content": "12 C and rain"}
        answered = client.chat([*ASKED, called["message"], answer], tools=[WEATHER])
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"]["city"], str)
    assert called["message"]["tool_calls"] == called["tool_calls"] and called["text"] == ""
    assert called["message"]["thinking"] == called["thinking"] != ""
    assert daemon.sent(ASKED[0]["content"])["tools"] == [WEATHER]
    # Streamed: no text; the calls come in the final result.
    assert streamed_text == [] and stream.result["tool_calls"] == called["tool_calls"]
    # The assistant's message went back unchanged, the tool's answer with its name.
    history = daemon.sent(answer["content"])["messages"]
    assert history[1:] == [called["message"], answer]
    assert answered["text"] and answered["tool_calls"] == []
    assert "tool_calls" not in answered["message"]


def test_langchains_tool_schemas_and_messages_go_through_the_daemon(shared_daemon):
    daemon = shared_daemon
    # Imported here: langchain takes a second to import, and only this test needs it.
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from langchain_ollama import ChatOllama

    @tool
    def get_weather(city: str, unit: str = "C") -> str:
        """The weather in a city."""
        return f"12 {unit} in {city}"

    schema = convert_to_openai_tool(get_weather)
    # ChatOllama's own conversion: what it would send Ollama, sent through the daemon.
    to_ollama = ChatOllama(model=CHAT)._convert_messages_to_ollama_messages
    question = HumanMessage(ASKED[0]["content"])
    with daemon.client() as client:
        first = client.chat(to_ollama([question]), tools=[schema])
        [call] = first["tool_calls"]
        function = call["function"]
        asked = AIMessage("", tool_calls=[{"name": function["name"], "args": function["arguments"],
                                          "id": call["id"]}])
        answer = ToolMessage(get_weather.invoke(function["arguments"]), tool_call_id=call["id"])
        second = client.chat(to_ollama([question, asked, answer]), tools=[schema])
    assert function["name"] == "get_weather" and second["text"] and second["tool_calls"] == []
    history = daemon.sent(answer.content)["messages"]
    assert history[1]["tool_calls"][0]["function"]["arguments"] == function["arguments"]
    assert history[2] == {"role": "tool", "content": answer.content, "images": [],
                          "tool_call_id": call["id"]}


def test_the_legacy_client_returns_tool_calls_and_thinking(shared_daemon):
    daemon = shared_daemon
    legacy = daemon.legacy()
    try:
        chat = legacy.chat(ASKED, tools=[WEATHER])
        thought = legacy.generate("Why is the sky blue?", model=THINKER)
        stream = legacy.stream("Why is the sky blue?", model=THINKER)
        streamed = "".join(stream)
        plain = legacy.generate("Why is the sky blue?")
    finally:
        legacy.shutdown()
    assert chat["success"] and chat["tool_calls"][0]["function"]["name"] == "get_weather"
    assert chat["message"]["tool_calls"] == chat["tool_calls"]
    assert thought["success"] and thought["thinking"] and thought["text"]
    assert stream.result["thinking"] == thought["thinking"] and streamed == thought["text"]
    assert plain["success"] and plain["thinking"] == ""


def test_think_returns_the_reasoning_streamed_and_not(shared_daemon):
    daemon = shared_daemon
    question = "Why is the sky blue?"
    with daemon.client(model=THINKER) as client:
        whole = client.generate(question)          # a thinking model thinks by default
        stream = client.stream(question)
        chunks = list(stream.chunks())
        text_only = list(client.stream(question))
        unthought = client.generate(question, think=False)
        chat = client.chat([{"role": "user", "content": "Hello"}], think="high")
        chat_stream = client.stream_chat([{"role": "user", "content": "Hello"}], think="high")
        chat_chunks = list(chat_stream.chunks())
        batch = client.batch(["one", "two"], think=False)
    assert whole["thinking"] and whole["text"]
    assert texts(chunks, "thinking") == stream.result["thinking"] == whole["thinking"]
    assert texts(chunks, "text") == stream.result["text"] == whole["text"]
    first_text = next(i for i, chunk in enumerate(chunks) if "text" in chunk)
    assert all("thinking" in chunk for chunk in chunks[:first_text])  # reasoning first
    assert all(text_only) and "".join(text_only) == whole["text"]  # plain: the answer alone
    assert unthought["thinking"] == "" and unthought["text"]
    assert daemon.sent(question)["think"] is False
    assert chat["thinking"] and chat["message"]["thinking"] == chat["thinking"]
    assert texts(chat_chunks, "thinking") == chat["thinking"]
    assert texts(chat_chunks, "text") == chat["text"] == chat["message"]["content"]
    assert daemon.sent("Hello")["think"] == "high"
    assert [item["thinking"] for item in batch] == ["", ""]


def test_the_async_client_streams_the_reasoning(shared_daemon):
    daemon = shared_daemon
    async def main():
        async with AsyncClient(daemon.socket, model=THINKER) as client:
            whole = await client.generate("Why?", think=True)
            stream = client.stream("Why?", think=True)
            chunks = [chunk async for chunk in stream.chunks()]
            return whole, chunks, stream.result
    whole, chunks, result = asyncio.run(main())
    assert texts(chunks, "thinking") == result["thinking"] == whole["thinking"] != ""
    assert texts(chunks, "text") == result["text"] == whole["text"] != ""


def test_think_on_a_model_that_cannot_think_is_ollamas_bad_request(shared_daemon):
    daemon = shared_daemon
    with daemon.client() as client, pytest.raises(BadRequest) as err:
        client.generate("hello", model=CHAT, think=True)
    assert err.value.message == f'"{CHAT}" does not support thinking' and err.value.attempts == 1


def test_bad_keep_alive_think_tools_and_messages_never_reach_ollama(daemon_factory):
    daemon = daemon_factory({"ollama": {"probe_interval": 60.0}})  # no probes in the count
    daemon.quiesce()
    user = {"role": "user", "content": "hi"}
    cases = [
        ("generate", {"prompt": "x", "keep_alive": "-1"},
         '\'keep_alive\' "-1" is not a Go duration (time: missing unit in duration "-1")'),
        ("chat", {"messages": [user], "keep_alive": "300"}, "'keep_alive' \"300\" is not"),
        ("embed", {"input": "x", "keep_alive": "5 minutes"}, "'keep_alive' \"5 minutes\" is not"),
        ("batch", {"prompts": ["x"], "think": "loud"}, "'think' must be true, false or one of"),
        ("chat", {"messages": [user], "tools": {"name": "f"}}, "'tools' must be a list"),
        ("chat", {"messages": [user], "tools": [{"function": {}}]}, "tools[0] must be an object"),
        ("chat", {"messages": [user, {"role": "assistant", "content": "",
                                      "tool_calls": [{"function": {"name": "f",
                                                                   "arguments": "{}"}}]}]},
         "messages[1].tool_calls[0].function.arguments must be an object"),
        ("chat", {"messages": [{"role": "tool", "content": "12 C", "tool_name": 3}]},
         "messages[0].tool_name must be a string"),
        ("chat", {"messages": [{**user, "images": ["not base64!"]}]},
         "messages[0].images[0] is not base64"),
    ]
    with daemon.client() as client:
        for op, args, message in cases:
            with pytest.raises(OllamadError) as err:
                client.request(op, args)
            assert err.value.code.value == "bad_request", (op, args)
            assert err.value.message.startswith(message), err.value.message
        # What Ollama takes does pass: a number is seconds, negative for ever.
        client.generate("kept", keep_alive=-1)
    assert daemon.sent("kept")["keep_alive"] == -1
    assert daemon.standin_state()["stats"]["completed_generations"] == 1
