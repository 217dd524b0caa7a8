"""The OpenAI-compatible endpoints, over raw HTTP (shapes from Ollama's openai/openai.go).

Streams are server-sent events: a first chunk whose delta has the role, the
content chunks, a finish chunk with an empty delta and the finish_reason, an
optional usage chunk, then `data: [DONE]`. Errors are OpenAI error objects.
"""

from __future__ import annotations

import base64
import json
import re
import struct

import pytest
import requests

MODEL = "llama3.1:8b"
TIMEOUT = 10.0
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}}}}


def post(standin, path: str, **body) -> requests.Response:
    return requests.post(standin.url + path, json=body, timeout=TIMEOUT)


def events(response: requests.Response) -> list:
    assert response.headers["Content-Type"] == "text/event-stream"
    blocks = response.text.split("\n\n")
    assert blocks[-1] == "" and all(block.startswith("data: ") for block in blocks[:-1])
    return [block[len("data: "):] for block in blocks[:-1]]


def test_chat_completion(standin):
    answer = post(standin, "/v1/chat/completions", model=MODEL, temperature=0,
                  messages=[{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hello"}])
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert re.fullmatch(r"chatcmpl-\d+", body["id"]) and body["object"] == "chat.completion"
    assert body["model"] == MODEL and body["system_fingerprint"] == "fp_ollama"
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    native = post(standin, "/api/chat", model=MODEL, stream=False,
                  options={"temperature": 0, "top_p": 1.0},
                  messages=[{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hello"}]).json()
    assert choice["message"]["content"] == native["message"]["content"]  # the same model


def test_chat_completion_stream(standin):
    answer = post(standin, "/v1/chat/completions", model=MODEL, stream=True,
                  stream_options={"include_usage": True},
                  messages=[{"role": "user", "content": "Hello"}])
    data = events(answer)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert len({chunk["created"] for chunk in chunks}) == 1
    *content, finish, usage = chunks
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in chunk["choices"][0]["delta"] for chunk in content[1:])
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in content)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(content)
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in content)
    whole = post(standin, "/v1/chat/completions", model=MODEL,
                 messages=[{"role": "user", "content": "Hello"}]).json()
    assert text == whole["choices"][0]["message"]["content"]


def test_chat_completion_tool_calls(standin):
    messages = [{"role": "user", "content": "weather in Rome?"}]
    body = post(standin, "/v1/chat/completions", model=MODEL, messages=messages,
                tools=[WEATHER]).json()
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_") and call["index"] == 0
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    streamed = [json.loads(item) for item in events(post(
        standin, "/v1/chat/completions", model=MODEL, messages=messages, tools=[WEATHER],
        stream=True))[:-1]]
    assert streamed[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert any(chunk["choices"][0]["delta"].get("tool_calls") for chunk in streamed)
    # The tool's answer goes back in OpenAI's shape; then the model answers in words.
    messages += [choice["message"], {"role": "tool", "tool_call_id": call["id"],
                                     "content": "sunny"}]
    final = post(standin, "/v1/chat/completions", model=MODEL, messages=messages,
                 tools=[WEATHER]).json()
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["choices"][0]["message"]["content"]


def test_chat_completion_json_schema(standin):
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}}}
    body = post(standin, "/v1/chat/completions", model=MODEL,
                messages=[{"role": "user", "content": "a person"}],
                response_format={"type": "json_schema", "json_schema": {"schema": schema}}).json()
    value = json.loads(body["choices"][0]["message"]["content"])
    assert isinstance(value["name"], str) and isinstance(value["age"], int)


def test_reasoning_comes_back_as_reasoning(ollama_standin_factory):
    standin = ollama_standin_factory(models=["qwen3:0.6b"])
    body = post(standin, "/v1/chat/completions", model="qwen3:0.6b",
                messages=[{"role": "user", "content": "Hi"}]).json()
    assert body["choices"][0]["message"]["reasoning"]
    none = post(standin, "/v1/chat/completions", model="qwen3:0.6b", reasoning_effort="none",
                messages=[{"role": "user", "content": "Hi"}]).json()
    assert "reasoning" not in none["choices"][0]["message"]


def test_completions(standin):
    body = post(standin, "/v1/completions", model=MODEL, prompt="Once", max_tokens=5).json()
    assert re.fullmatch(r"cmpl-\d+", body["id"]) and body["object"] == "text_completion"
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 5
    data = events(post(standin, "/v1/completions", model=MODEL, prompt="Once", max_tokens=5,
                       stream=True))
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == choice["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_embeddings(standin):
    body = post(standin, "/v1/embeddings", model="nomic-embed-text", input=["a", "b"]).json()
    assert body["object"] == "list" and body["model"] == "nomic-embed-text"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 768
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    packed = post(standin, "/v1/embeddings", model="nomic-embed-text", input="a",
                  encoding_format="base64").json()["data"][0]["embedding"]
    floats = struct.unpack("<768f", base64.b64decode(packed))
    assert floats == pytest.approx(body["data"][0]["embedding"], abs=1e-6)


def test_models(standin):
    body = requests.get(standin.url + "/v1/models", timeout=TIMEOUT).json()
    assert body["object"] == "list"
    listed = {item["id"]: item for item in body["data"]}
    assert listed[MODEL]["object"] == "model" and listed[MODEL]["owned_by"] == "library"
    one = requests.get(standin.url + f"/v1/models/{MODEL}", timeout=TIMEOUT).json()
    assert one == listed[MODEL]


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
     404, "model 'nope' not found"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400,
     "[] is too short - 'messages'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400,
     "json: cannot unmarshal string into Go struct field ChatCompletionRequest.messages of "
     "type []openai.Message"),
    ("/v1/embeddings", {"model": "nomic-embed-text", "input": "a", "encoding_format": "hex"},
     400, "Invalid value for 'encoding_format' = hex. Supported values: ['float', 'base64']."),
])
def test_errors_are_openai_error_objects(standin, path, body, status, message):
    answer = post(standin, path, **body)
    assert answer.status_code == status
    error_type = {400: "invalid_request_error", 404: "not_found_error"}[status]
    assert answer.json() == {"error": {"message": message, "type": error_type, "param": None,
                                       "code": None}}
    missing = requests.get(standin.url + "/v1/models/nope", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
