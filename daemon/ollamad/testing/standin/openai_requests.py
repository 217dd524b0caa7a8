"""OpenAI-style request bodies turned into Ollama's native ones (openai/openai.go).

`chat_request`, `completion_request` and `embed_request` take the raw body
of `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` and return
(native body, what the answer writer needs to know), or raise ApiError(400)
with Ollama's text. Defaults differ from the native API: `stream` is false,
temperature and top_p are 1.0.
"""

from __future__ import annotations

import json
from typing import Any

from ollamad.testing.standin import gojson
from ollamad.testing.standin.apitypes import ApiError
from ollamad.testing.standin.gojson import ANY, BOOL, FLOAT, INT, STRING

_STREAM_OPTIONS = gojson.struct("openai.StreamOptions", include_usage=BOOL)
_TOOL_CALL = gojson.struct("openai.ToolCall", id=STRING, index=INT, type=STRING,
                           function=gojson.struct("openai.ToolCallFunction", name=STRING,
                                                  arguments=STRING))
_MESSAGE = gojson.struct("openai.Message", role=STRING, content=ANY, reasoning=STRING,
                         tool_calls=gojson.slice_of(_TOOL_CALL, "[]openai.ToolCall"),
                         name=STRING, tool_call_id=STRING)
CHAT = gojson.struct(
    "openai.ChatCompletionRequest", model=STRING, messages=gojson.slice_of(_MESSAGE),
    stream=BOOL, stream_options=_STREAM_OPTIONS, max_tokens=INT, seed=INT, stop=ANY,
    temperature=FLOAT, frequency_penalty=FLOAT, presence_penalty=FLOAT, top_p=FLOAT,
    response_format=gojson.struct("openai.ResponseFormat", type=STRING, json_schema=ANY),
    tools=gojson.slice_of(ANY, "[]api.Tool"), reasoning=ANY, reasoning_effort=STRING)
COMPLETION = gojson.struct(
    "openai.CompletionRequest", model=STRING, prompt=STRING, frequency_penalty=FLOAT,
    max_tokens=INT, presence_penalty=FLOAT, seed=INT, stop=ANY, stream=BOOL,
    stream_options=_STREAM_OPTIONS, temperature=FLOAT, top_p=FLOAT, suffix=STRING)
EMBED = gojson.struct("openai.EmbedRequest", input=ANY, model=STRING, dimensions=INT,
                      encoding_format=STRING)

_EFFORTS = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
            "max": "max", "xhigh": "max", "ultra": "max"}


def _decode(body: bytes, go_type: gojson.GoType) -> dict[str, Any]:
    try:
        return gojson.decode_struct(body, go_type)
    except gojson.EmptyBody:
        raise ApiError(400, "EOF") from None
    except gojson.DecodeError as exc:
        raise ApiError(400, str(exc)) from None


def _tool_calls(calls: list[dict]) -> list[dict]:
    converted = []
    for call in calls:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "")
        except ValueError:
            raise ApiError(400, "invalid tool call arguments") from None
        converted.append({"id": call.get("id", ""),
                          "function": {"name": function.get("name", ""), "arguments": arguments}})
    return converted


def _messages(messages: list[dict]) -> list[dict]:
    native = []
    for message in messages:
        role, content = message.get("role", ""), message.get("content")
        extra = {key: value for key, value in (
            ("thinking", message.get("reasoning")), ("tool_name", message.get("name")),
            ("tool_call_id", message.get("tool_call_id")),
            ("tool_calls", _tool_calls(message.get("tool_calls") or []))) if value}
        if isinstance(content, str):
            native.append({"role": role, "content": content, **extra})
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" \
                        or not isinstance(part.get("text"), str):
                    raise ApiError(400, "invalid message format")  # images: not pretended
                native.append({"role": role, "content": part["text"]})
            if native and extra:
                native[-1].update(extra)
        elif message.get("tool_calls"):
            native.append({"role": role, **extra})
        else:
            kind = "<nil>" if content is None else gojson.go_type_name(content)
            raise ApiError(400, f"invalid message content type: {kind}")
    return native


def _stops(stop: Any, strict: bool) -> dict[str, Any]:
    if isinstance(stop, str):
        return {"stop": [stop]}
    if isinstance(stop, list):
        if strict and not all(isinstance(item, str) for item in stop):
            bad = next(item for item in stop if not isinstance(item, str))
            raise ApiError(400, f"invalid type for 'stop' field: {gojson.go_type_name(bad)}")
        return {"stop": [item for item in stop if isinstance(item, str)]}
    return {}


def _sampling(request: dict, strict_stop: bool) -> dict[str, Any]:
    options = _stops(request.get("stop"), strict_stop)
    if "max_tokens" in request:
        options["num_predict"] = request["max_tokens"]
    options["temperature"] = request.get("temperature", 1.0)
    for name in ("seed", "frequency_penalty", "presence_penalty"):
        if name in request:
            options[name] = request[name]
    options["top_p"] = request.get("top_p") or 1.0
    return options


def _think(request: dict) -> dict[str, Any]:
    reasoning = request.get("reasoning")
    effort = reasoning.get("effort", "") if isinstance(reasoning, dict) else \
        request.get("reasoning_effort", "")
    if not effort:
        return {}
    if effort not in _EFFORTS:
        raise ApiError(400, f'invalid reasoning value: {gojson.dumps(effort).decode()} (must be '
                            '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", '
                            'or "none")')
    return {"think": _EFFORTS[effort]}


def _format(request: dict) -> dict[str, Any]:
    response_format = request.get("response_format") or {}
    kind = str(response_format.get("type", "")).strip().lower()
    if kind == "json_object":
        return {"format": "json"}
    schema = response_format.get("json_schema")
    if kind == "json_schema" and isinstance(schema, dict) and "schema" in schema:
        return {"format": schema["schema"]}
    return {}


def chat_request(body: bytes) -> tuple[dict, dict]:
    request = _decode(body, CHAT)
    if not request.get("messages"):
        raise ApiError(400, "[] is too short - 'messages'")
    native = {"model": request.get("model", ""), "messages": _messages(request["messages"]),
              "options": _sampling(request, strict_stop=False),
              "stream": request.get("stream", False), **_format(request), **_think(request)}
    if request.get("tools"):
        native["tools"] = request["tools"]
    return native, request


def completion_request(body: bytes) -> tuple[dict, dict]:
    request = _decode(body, COMPLETION)
    native = {"model": request.get("model", ""), "prompt": request.get("prompt", ""),
              "options": {**_sampling(request, strict_stop=True),
                          "frequency_penalty": request.get("frequency_penalty", 0.0),
                          "presence_penalty": request.get("presence_penalty", 0.0)},
              "stream": request.get("stream", False)}
    if request.get("suffix"):
        native["suffix"] = request["suffix"]
    return native, request


def embed_request(body: bytes) -> tuple[dict, dict]:
    request = _decode(body, EMBED)
    encoding = request.get("encoding_format", "")
    if encoding and encoding.lower() not in ("float", "base64"):
        raise ApiError(400, f"Invalid value for 'encoding_format' = {encoding}. "
                            "Supported values: ['float', 'base64'].")
    value = request.get("input")
    if value == "":
        value = [""]
    if value is None or value == []:
        raise ApiError(400, "invalid input")
    return {"model": request.get("model", ""), "input": value}, request

