"""Ollama's OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions,
/v1/embeddings, /v1/models and /v1/models/{model}.

As in Ollama (middleware/openai.go, openai/openai.go) each inference endpoint
rewrites the request into the native one (`openai_requests`), runs the
native handler, and rewrites what it writes: a JSON answer becomes an OpenAI
object, an NDJSON stream becomes server-sent events (`data: {...}` ...
`data: [DONE]`), an error becomes `{"error": {"message", "type", "param",
"code"}}` with the same status.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import time
from typing import Any, Callable

from ollamad.testing.standin import gojson, openai_requests
from ollamad.testing.standin.apitypes import ApiError, not_found
from ollamad.testing.standin.catalog import Catalog, Model
from ollamad.testing.standin.httpserver import Exchange

EVENT_STREAM = "text/event-stream"
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
_DONE = b"data: [DONE]\n\n"


def _event(value: Any) -> bytes:
    return b"data: " + gojson.dumps(value) + b"\n\n"


def _send_error(exchange: Exchange, status: int, message: str):
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"),
                      "param": None, "code": None}}
    exchange.send_json(status, body, "application/json")


def _usage(answer: dict) -> dict:
    prompt, completion = answer.get("prompt_eval_count", 0), answer.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _tool_calls(calls: list[dict]) -> list[dict]:
    """api.ToolCall as OpenAI has it: arguments as a JSON string."""
    return [{"id": call.get("id", ""), "index": call["function"].get("index", 0),
             "type": "function",
             "function": {"name": call["function"]["name"],
                          "arguments": gojson.dumps(call["function"]["arguments"]).decode()}}
            for call in calls]


def _owner(name: str) -> str:
    parts = name.split("/")
    return parts[-2] if len(parts) > 1 else "library"


class _Answers:
    """Rewrites one native answer (or stream) for an OpenAI client."""

    def __init__(self, request: dict, prefix: str):
        self.id = f"{prefix}-{random.randrange(999)}"
        self.created = int(time.time())
        self.include_usage = bool((request.get("stream_options") or {}).get("include_usage"))

    def answer(self, native: dict) -> dict:
        raise NotImplementedError

    def events(self, native: dict) -> bytes:
        raise NotImplementedError


class _ChatAnswers(_Answers):
    def __init__(self, request: dict):
        super().__init__(request, "chatcmpl")
        self._first_sent = self._tool_call_sent = False

    def answer(self, native: dict) -> dict:
        message = native.get("message") or {}
        calls = _tool_calls(message.get("tool_calls") or [])
        reply = {"role": message.get("role", ""), "content": message.get("content", "")}
        if message.get("thinking"):
            reply["reasoning"] = message["thinking"]
        if calls:
            reply["tool_calls"] = calls
        reason = native.get("done_reason") or None
        if reason == "stop" and calls:
            reason = "tool_calls"
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": native.get("model", ""), "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": reply, "finish_reason": reason}],
                "usage": _usage(native)}

    def _chunk(self, native: dict, delta: dict, finish: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": native.get("model", ""), "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def events(self, native: dict) -> bytes:
        # An {"error": ...} line reads as an empty response here, as in Ollama's ChatWriter.
        message = native.get("message") or {}
        content, thinking = message.get("content", ""), message.get("thinking", "")
        calls = _tool_calls(message.get("tool_calls") or [])
        out = b""
        trailer = native.get("done") and self._first_sent and not (content or thinking or calls)
        if not trailer:  # OpenAI goes from the last content chunk straight to the finish
            role = {} if self._first_sent else {"role": "assistant"}
            said = {"content": content, **({"tool_calls": calls} if calls else {})}
            if thinking and (content or calls):  # reasoning and the rest: two chunks
                out += _event(self._chunk(native, {**role, "reasoning": thinking}))
                out += _event(self._chunk(native, said))
            else:
                out += _event(self._chunk(native, {**role, **said, **(
                    {"reasoning": thinking} if thinking else {})}))
            self._first_sent = True
            self._tool_call_sent = self._tool_call_sent or bool(calls)
        if native.get("done"):
            reason = native.get("done_reason") or "stop"
            if reason == "stop" and self._tool_call_sent:
                reason = "tool_calls"
            finish = self._chunk(native, {}, reason)
            out += _event(finish)
            if self.include_usage:
                out += _event({**finish, "choices": [], "usage": _usage(native)})
            out += _DONE
        return out


class _CompletionAnswers(_Answers):
    def __init__(self, request: dict):
        super().__init__(request, "cmpl")

    def _choice(self, native: dict) -> list[dict]:
        return [{"text": native.get("response", ""), "index": 0,
                 "finish_reason": native.get("done_reason") or None}]

    def answer(self, native: dict) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": native.get("model", ""), "system_fingerprint": "fp_ollama",
                "choices": self._choice(native), "usage": _usage(native)}

    def events(self, native: dict) -> bytes:
        chunk = {"id": self.id, "object": "text_completion", "created": int(time.time()),
                 "choices": self._choice(native), "model": native.get("model", ""),
                 "system_fingerprint": "fp_ollama"}
        if self.include_usage:
            chunk["usage"] = _usage({})
        out = _event(chunk)
        if native.get("done"):
            if self.include_usage:
                out += _event({**chunk, "choices": [], "usage": _usage(native)})
            out += _DONE
        return out


class _EmbedAnswers(_Answers):
    def __init__(self, request: dict):
        super().__init__(request, "embd")
        self._model = request.get("model", "")
        self._base64 = str(request.get("encoding_format", "")).lower() == "base64"

    def answer(self, native: dict) -> dict:
        def encoded(vector: list[float]) -> Any:
            if not self._base64:
                return vector
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

        count = native.get("prompt_eval_count", 0)
        return {"object": "list",
                "data": [{"object": "embedding", "embedding": encoded(vector), "index": index}
                         for index, vector in enumerate(native.get("embeddings") or [])],
                "model": self._model, "usage": {"prompt_tokens": count, "total_tokens": count}}


class _Stream:
    def __init__(self, exchange: Exchange, answers: _Answers):
        self._stream = exchange.stream(EVENT_STREAM)
        self._answers = answers

    @property
    def started(self) -> bool:
        return self._stream.started

    def write(self, value: Any, last: bool = False):
        self._stream.send(self._answers.events(value), last)


class _Translated:
    """The exchange a native handler sees: the native body in, OpenAI answers out."""

    def __init__(self, exchange: Exchange, body: bytes, answers: _Answers):
        self._exchange = exchange
        self._answers = answers
        self.body = body
        self.method, self.path, self.peer = exchange.method, exchange.path, exchange.peer

    @property
    def answered(self) -> bool:
        return self._exchange.answered

    def send(self, status: int, body: bytes, content_type: str, extra_headers: str = ""):
        value = json.loads(body)
        if status != 200:
            return _send_error(self._exchange, status, value.get("error", ""))
        self._exchange.send_json(200, self._answers.answer(value), "application/json")

    def send_json(self, status: int, value: Any, content_type: str = ""):
        self.send(status, value if isinstance(value, bytes) else gojson.dumps(value), "")

    def send_error(self, status: int, message: str, content_type: str = ""):
        _send_error(self._exchange, status, message)

    def stream(self, content_type: str = "") -> _Stream:
        return _Stream(self._exchange, self._answers)


class OpenAI:
    """The /v1/ routes, on top of the native handlers."""

    def __init__(self, catalog: Catalog, chat: Callable[[Any], None],
                 generate: Callable[[Any], None], embed: Callable[[Any], None]):
        self._catalog = catalog
        self._chat, self._generate, self._embed = chat, generate, embed

    def chat_completions(self, exchange: Exchange):
        self._translate(exchange, openai_requests.chat_request, _ChatAnswers, self._chat)

    def completions(self, exchange: Exchange):
        self._translate(exchange, openai_requests.completion_request, _CompletionAnswers,
                        self._generate)

    def embeddings(self, exchange: Exchange):
        self._translate(exchange, openai_requests.embed_request, _EmbedAnswers, self._embed)

    def models(self, exchange: Exchange):
        data = [self._model(model) for model in self._catalog.all()]
        exchange.send_json(200, {"object": "list", "data": data or None}, "application/json")

    def model(self, exchange: Exchange, name: str):
        model = self._catalog.find(name)
        if model is None:
            return _send_error(exchange, 404, not_found(name).message)
        exchange.send_json(200, {**self._model(model), "id": name}, "application/json")

    @staticmethod
    def _model(model: Model) -> dict:
        return {"id": model.name, "object": "model", "created": model.modified_ns // 10**9,
                "owned_by": _owner(model.name)}

    @staticmethod
    def _translate(exchange: Exchange, convert, answers_class, handler):
        try:
            native, request = convert(exchange.body)
        except ApiError as error:
            return _send_error(exchange, error.status, error.message)
        translated = _Translated(exchange, gojson.dumps(native), answers_class(request))
        try:
            handler(translated)
        except ApiError as error:
            if not exchange.answered:
                _send_error(exchange, error.status, error.message)
