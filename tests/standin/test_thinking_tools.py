"""Thinking, tools, copy and delete, judged by the official `ollama` client.

From Ollama's source (server/routes.go, server/images.go, api/types.go): a
model with the `thinking` capability thinks unless told not to (think
defaults to true), its reasoning streams in `thinking` / `message.thinking`
and counts against num_predict; `think` on a model without the capability
is a 400 `"NAME" does not support thinking`. Tools in a chat need the
`tools` capability (400 `registry.ollama.ai/library/NAME does not support
tools`); a reply carries `message.tool_calls`.
"""

from __future__ import annotations

import json

import ollama
import pytest
import requests

from ollamad.testing import StandIn

THINKER = "qwen3:0.6b"
CHAT = "llama3.1:8b"
PLAIN = "tinyllm:1b"  # a name the catalogue does not know: completion only
TIMEOUT = 10.0
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def standin():
    with StandIn(models=[THINKER, CHAT, PLAIN, "nomic-embed-text"]) as running:
        yield running


@pytest.fixture
def client(standin):
    with ollama.Client(host=standin.url, timeout=TIMEOUT) as judge:
        yield judge


def test_show_lists_the_capabilities(client):
    assert client.show(THINKER).capabilities == ["completion", "tools", "thinking"]
    assert client.show(CHAT).capabilities == ["completion", "tools"]
    assert client.show(PLAIN).capabilities == ["completion"]
    assert client.show("nomic-embed-text").capabilities == ["embedding"]


def test_a_thinking_model_thinks_by_default_and_not_when_told(client):
    thought = client.generate(THINKER, "Why is the sky blue?")
    assert thought.thinking and thought.response and thought.done_reason == "stop"
    parts = list(client.generate(THINKER, "Why is the sky blue?", stream=True))
    thinking = [p.thinking for p in parts if p.thinking]
    answer = [p.response for p in parts if p.response]
    assert "".join(thinking) == thought.thinking and "".join(answer) == thought.response
    first_answer = next(i for i, p in enumerate(parts) if p.response)
    assert all(not p.thinking for p in parts[first_answer:])  # reasoning comes first
    assert parts[-1].eval_count == thought.eval_count == len(thinking) + len(answer)
    plain = client.generate(THINKER, "Why is the sky blue?", think=False)
    assert plain.thinking is None and plain.response


def test_reasoning_counts_against_num_predict(client):
    full = client.generate(THINKER, "Why?", options={"num_predict": -1})
    budget = len(full.thinking.split()) // 2  # runs out while thinking
    cut = client.generate(THINKER, "Why?", options={"num_predict": budget})
    assert (cut.response, cut.done_reason, cut.eval_count) == ("", "length", budget)
    assert full.thinking.startswith(cut.thinking) and len(cut.thinking) < len(full.thinking)


def test_chat_streams_thinking_in_the_message(client):
    messages = [{"role": "user", "content": "Hello"}]
    whole = client.chat(THINKER, messages=messages, think="high")
    parts = list(client.chat(THINKER, messages=messages, think="high", stream=True))
    assert whole.message.thinking and whole.message.content
    assert "".join(p.message.thinking or "" for p in parts) == whole.message.thinking
    assert "".join(p.message.content for p in parts) == whole.message.content


@pytest.mark.parametrize("call", [
    lambda c: c.generate(CHAT, "hi", think=True),
    lambda c: c.chat(CHAT, messages=[{"role": "user", "content": "hi"}], think=True),
])
def test_think_on_a_model_that_cannot_is_400(client, call):
    with pytest.raises(ollama.ResponseError) as error:
        call(client)
    assert (error.value.status_code, error.value.error) == (
        400, f'"{CHAT}" does not support thinking')
    assert client.generate(CHAT, "hi", think=False).response  # think=false is fine


def test_think_values_are_checked(standin):
    answer = requests.post(standin.url + "/api/generate", timeout=TIMEOUT,
                           json={"model": THINKER, "prompt": "hi", "think": "extreme"})
    assert (answer.status_code, answer.json()) == (400, {"error": (
        'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, '
        "or false)")})


def test_a_chat_with_tools_gets_a_deterministic_tool_call(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = client.chat(CHAT, messages=messages, tools=[TIME, WEATHER])
    [call] = reply.message.tool_calls
    assert call.function.name == "get_weather"  # the one the question names
    assert isinstance(call.function.arguments["city"], str)
    assert call.function.arguments["unit"] in ("C", "F")
    assert reply.message.content == "" and reply.done_reason == "stop"
    again = client.chat(CHAT, messages=messages, tools=[TIME, WEATHER])
    assert again.message.tool_calls == reply.message.tool_calls
    other = client.chat(CHAT, messages=[{"role": "user", "content": "Hi"}], tools=[TIME, WEATHER])
    assert other.message.tool_calls[0].function.name == "get_time"  # else the first


def test_a_streamed_tool_call_comes_in_one_chunk(client):
    messages = [{"role": "user", "content": "weather in Oslo?"}]
    parts = list(client.chat(CHAT, messages=messages, tools=[WEATHER], stream=True))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1 and not any(p.message.content for p in parts)
    assert parts[-1].done and parts[-1].eval_count > 0


def test_after_the_tools_answer_the_model_answers_in_words(client):
    messages = [{"role": "user", "content": "weather in Oslo?"}]
    reply = client.chat(CHAT, messages=messages, tools=[WEATHER])
    messages += [reply.message, {"role": "tool", "content": "12 C, rain",
                                 "tool_name": "get_weather"}]
    final = client.chat(CHAT, messages=messages, tools=[WEATHER])
    assert final.message.content and not final.message.tool_calls


def test_tools_on_a_model_without_the_capability_is_400(client):
    with pytest.raises(ollama.ResponseError) as error:
        client.chat(PLAIN, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER])
    assert (error.value.status_code, error.value.error) == (
        400, f"registry.ollama.ai/library/{PLAIN} does not support tools")


def test_tool_calls_in_the_raw_answer_have_ollamas_shape(standin):
    answer = requests.post(standin.url + "/api/chat", timeout=TIMEOUT, json={
        "model": CHAT, "stream": False, "tools": [WEATHER],
        "messages": [{"role": "user", "content": "weather?"}]}).json()
    [call] = answer["message"]["tool_calls"]
    assert list(call) == ["id", "function"] and call["id"].startswith("call_")
    assert len(call["id"]) == len("call_") + 8
    assert list(call["function"]) == ["index", "name", "arguments"]
    assert json.loads(json.dumps(call["function"]["arguments"]))["city"]


def test_copy_and_delete(client, standin):
    assert client.copy(CHAT, "my-llama").status == "success"
    names = {model.model for model in client.list().models}
    assert {"my-llama:latest", CHAT} <= names
    copied = next(m for m in client.list().models if m.model == "my-llama:latest")
    original = next(m for m in client.list().models if m.model == CHAT)
    assert copied.digest == original.digest and copied.size == original.size
    assert client.generate("my-llama", "hi").response
    assert client.delete("my-llama").status == "success"
    assert "my-llama:latest" not in {model.model for model in client.list().models}
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("my-llama")
    assert (missing.value.status_code, missing.value.error) == (404, "model 'my-llama' not found")
    with pytest.raises(ollama.ResponseError) as no_source:
        client.copy("nothing-here", "else")
    assert (no_source.value.status_code, no_source.value.error) == (
        404, 'model "nothing-here" not found')


def test_copy_and_delete_answer_an_empty_200(standin):
    for method, path, body in (("POST", "/api/copy", {"source": CHAT, "destination": "raw"}),
                               ("DELETE", "/api/delete", {"model": "raw"})):
        answer = requests.request(method, standin.url + path, json=body, timeout=TIMEOUT)
        assert (answer.status_code, answer.content, answer.headers.get("Content-Type")) == (
            200, b"", None)
