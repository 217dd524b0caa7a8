"""Validation of op arguments, and their translation into Ollama request bodies.

Bad arguments are answered ``bad_request`` with a message naming the field,
before anything reaches Ollama.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ollamad import goduration
from ollamad.ollama.runner import RunnerPolicy
from ollamad.retry import OllamaFailure
from ollamad_client import protocol
from ollamad_client.protocol import ErrorCode


#: Longest model name a pull takes (a registry host of 350 characters and Ollama's parts).
MAX_MODEL_NAME = 600


class InvalidArguments(OllamaFailure):
    def __init__(self, message: str):
        super().__init__(ErrorCode.BAD_REQUEST, message, retryable=False)


def _typed(args: Mapping[str, Any], key: str, types: tuple[type, ...], what: str,
           required: bool = False) -> Any:
    if key not in args or args[key] is None:
        if required:
            raise InvalidArguments(f"'{key}' is required ({what})")
        return None
    value = args[key]
    if isinstance(value, bool) and bool not in types:
        raise InvalidArguments(f"'{key}' must be {what}")
    if not isinstance(value, types):
        raise InvalidArguments(f"'{key}' must be {what}")
    return value


@dataclass(frozen=True)
class GenerationDefaults:
    model: str
    max_tokens_cap: int
    #: How long Ollama keeps a model after a request that does not say (``ollama.keep_alive``).
    keep_alive: str = "30m"
    runner: RunnerPolicy = RunnerPolicy()

    @classmethod
    def from_config(cls, config) -> "GenerationDefaults":
        return cls(model=config.model, max_tokens_cap=config.max_tokens_cap,
                   keep_alive=config.ollama.keep_alive, runner=RunnerPolicy.from_config(config))


@dataclass(frozen=True)
class Limits:
    """What the daemon accepts; ``ping`` tells clients, so they split work to fit."""

    max_message_bytes: int
    max_batch: int
    max_embed_inputs: int
    max_reply_bytes: int
    max_queued_bytes: int

    @classmethod
    def from_config(cls, config) -> "Limits":
        # Each limit is the config key of the same name.
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

    def advertised(self) -> dict[str, Any]:
        return {"max_message_bytes": self.max_message_bytes, "max_batch": self.max_batch,
                "max_embed_inputs": self.max_embed_inputs,
                "max_reply_bytes": self.max_reply_bytes, "max_timeout": protocol.MAX_TIMEOUT}


#: Roles Ollama's chat template knows.
CHAT_ROLES = ("system", "user", "assistant", "tool")
#: What ``think`` may be besides true and false (api.ThinkValue in Ollama v0.33).
THINK_LEVELS = ("high", "medium", "low", "max")


def _options(args: Mapping[str, Any], defaults: GenerationDefaults) -> dict[str, Any]:
    options = dict(_typed(args, "options", (dict,), "an object") or {})
    temperature = _typed(args, "temperature", (int, float), "a number")
    if temperature is not None:
        options["temperature"] = temperature
    max_tokens = _typed(args, "max_tokens", (int,), "a positive integer")
    if max_tokens is not None:
        if max_tokens <= 0:
            raise InvalidArguments("'max_tokens' must be a positive integer")
        options["num_predict"] = max_tokens
    # Runaway generation (ollama#2805, #9273) is capped here, whatever was asked.
    asked = options.get("num_predict")
    if not isinstance(asked, int) or isinstance(asked, bool) or asked < 0 \
            or asked > defaults.max_tokens_cap:
        options["num_predict"] = defaults.max_tokens_cap
    return options


def _keep_alive(args: Mapping[str, Any]) -> str | int | float | None:
    """``keep_alive`` as Ollama reads it; a string without a unit would be Ollama's 400."""
    value = _typed(args, "keep_alive", (str, int, float), 'a Go duration ("10m") or seconds')
    if value is not None:
        try:
            goduration.keep_alive_ns(value)
        except ValueError as exc:
            raise InvalidArguments(
                f"'keep_alive' {json.dumps(value)} is not a Go duration ({exc}): a string "
                'needs a unit ("10m", "1h30m", "-1s" for ever); a number is seconds') from None
    return value


def _think(args: Mapping[str, Any]) -> bool | str | None:
    value = args.get("think")
    if value is None or isinstance(value, bool) or value in THINK_LEVELS:
        return value
    levels = ", ".join(f'"{level}"' for level in THINK_LEVELS)
    raise InvalidArguments(f"'think' must be true, false or one of {levels}")


def _common_body(args: Mapping[str, Any], defaults: GenerationDefaults) -> dict[str, Any]:
    model = _typed(args, "model", (str,), "a string") or defaults.model
    body: dict[str, Any] = {
        "model": model,
        "options": defaults.runner.apply(model, _options(args, defaults)),
        "stream": True,
    }
    fmt = _typed(args, "format", (str, dict), '"json" or a JSON schema object')
    if isinstance(fmt, str) and fmt != "json":
        raise InvalidArguments('\'format\' must be "json" or a JSON schema object')
    if fmt is not None:
        body["format"] = fmt
    keep_alive = _keep_alive(args)
    # Always said: the daemon knows then how long the model stays (ollamad.ollama.loads).
    body["keep_alive"] = defaults.keep_alive if keep_alive is None else keep_alive
    think = _think(args)
    if think is not None:
        body["think"] = think
    return body


def _result(text: str, final: Mapping[str, Any], attempts: int, elapsed: float) -> dict[str, Any]:
    eval_count = int(final.get("eval_count") or 0)
    eval_ns = int(final.get("eval_duration") or 0)
    return {
        "text": text,
        "model": final.get("model"),
        "done_reason": final.get("done_reason"),
        "prompt_tokens": int(final.get("prompt_eval_count") or 0),
        "completion_tokens": eval_count,
        "tokens": eval_count,
        "total_duration_ns": int(final.get("total_duration") or 0),
        "load_duration_ns": int(final.get("load_duration") or 0),
        "prompt_eval_duration_ns": int(final.get("prompt_eval_duration") or 0),
        "eval_duration_ns": eval_ns,
        "tokens_per_second": round(eval_count / eval_ns * 1e9, 3) if eval_ns else 0.0,
        "attempts": attempts,
        "response_time": round(elapsed, 6),
    }


@dataclass
class Answer:
    """One attempt's answer as Ollama streams it: pieces for the client, then the result.

    Thinking models stream their reasoning in ``thinking`` (generate) or
    ``message.thinking`` (chat) before the text; a chat's tool calls come in
    ``message.tool_calls`` of some line, not necessarily the last.
    """

    chat: bool
    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[Any] = field(default_factory=list)

    def add(self, line: Mapping[str, Any]) -> dict[str, str]:
        """Take one line of Ollama's stream; returns its pieces for a streaming client,
        ``{"thinking": ...}`` and/or ``{"text": ...}`` (``{}``: none)."""
        fields = line.get("message") if self.chat else line
        if not isinstance(fields, Mapping):
            return {}
        chunk: dict[str, str] = {}
        for key, pieces, name in (("thinking", self.thinking, "thinking"),
                                  ("text", self.text, "content" if self.chat else "response")):
            piece = fields.get(name)
            if isinstance(piece, str) and piece:
                pieces.append(piece)
                chunk[key] = piece
        calls = fields.get("tool_calls")
        if self.chat and isinstance(calls, list):
            self.tool_calls.extend(calls)
        return chunk

    @property
    def has_pieces(self) -> bool:
        return bool(self.text or self.thinking)

    def result(self, final: Mapping[str, Any], attempts: int, elapsed: float) -> dict[str, Any]:
        text, thinking = "".join(self.text), "".join(self.thinking)
        result = _result(text, final, attempts, elapsed)
        result["thinking"] = thinking
        if self.chat:
            # Shaped like Ollama's message (empty fields left out), so that it can
            # go back as history in the next chat of an agent loop unchanged.
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if self.tool_calls:
                message["tool_calls"] = self.tool_calls
            result["message"] = message
            result["tool_calls"] = self.tool_calls
        return result


@dataclass(frozen=True)
class GenerationCall:
    """A validated generate or chat call: where it goes and what it sends."""

    path: str
    body: Mapping[str, Any]

    def answer(self) -> Answer:
        """A reader for one attempt's answer (a retry starts a new one)."""
        return Answer(chat=self.path == "/api/chat")


def generate_call(args: Mapping[str, Any], defaults: GenerationDefaults,
                  prompt: str | None = None) -> GenerationCall:
    """``prompt`` overrides ``args['prompt']`` (a batch item shares the other args)."""
    body = _common_body(args, defaults)
    body["prompt"] = prompt if prompt is not None else \
        _typed(args, "prompt", (str,), "a string", required=True)
    system = _typed(args, "system", (str,), "a string")
    if system is not None:
        body["system"] = system
    return GenerationCall("/api/generate", body)


def _function_of(where: str, item: Any) -> dict[str, Any]:
    """``item["function"]`` of a tool or a tool call, checked: an object with a name."""
    function = item.get("function") if isinstance(item, dict) else None
    if not (isinstance(function, dict) and isinstance(function.get("name"), str)
            and function["name"]):
        raise InvalidArguments(f"{where} must be an object whose 'function' object has a "
                               f"'name' string")
    return function


def _tool_call(where: str, call: Any) -> Any:
    function = _function_of(where, call)
    if function.get("arguments") is not None and not isinstance(function["arguments"], dict):
        raise InvalidArguments(f"{where}.function.arguments must be an object")
    return call


def _images(where: str, images: Any) -> list[str]:
    if not (isinstance(images, list) and all(isinstance(image, str) for image in images)):
        raise InvalidArguments(f"{where} must be a list of base64 strings")
    for j, image in enumerate(images):
        try:
            # As Go decodes a []byte from JSON: line breaks skipped, padding required.
            base64.b64decode(image.replace("\r", "").replace("\n", ""), validate=True)
        except binascii.Error:
            raise InvalidArguments(f"{where}[{j}] is not base64") from None
    return images


def _chat_message(i: int, message: Any) -> dict[str, Any]:
    """The message as Ollama gets it: its known fields, checked; other keys are dropped."""
    where = f"messages[{i}]"
    if not (isinstance(message, dict) and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)):
        raise InvalidArguments(f"{where} must be an object with string 'role' and 'content'")
    if message["role"] not in CHAT_ROLES:
        raise InvalidArguments(f"{where}.role must be one of {', '.join(CHAT_ROLES)}")
    passed = {"role": message["role"], "content": message["content"]}
    # thinking: an earlier answer's reasoning; tool_name (and OpenAI-style
    # tool_call_id): which tool a role "tool" message answers for.
    for key in ("thinking", "tool_name", "tool_call_id"):
        if message.get(key) is not None:
            if not isinstance(message[key], str):
                raise InvalidArguments(f"{where}.{key} must be a string")
            passed[key] = message[key]
    if message.get("images") is not None:
        passed["images"] = _images(f"{where}.images", message["images"])
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise InvalidArguments(f"{where}.tool_calls must be a list of tool calls")
        passed["tool_calls"] = [_tool_call(f"{where}.tool_calls[{j}]", call)
                                for j, call in enumerate(calls)]
    return passed


def _tools(args: Mapping[str, Any]) -> list[Any] | None:
    tools = _typed(args, "tools", (list,), "a list of tool objects")
    for i, tool in enumerate(tools or []):
        function = _function_of(f"tools[{i}]", tool)
        if function.get("parameters") is not None and not isinstance(function["parameters"],
                                                                      dict):
            raise InvalidArguments(f"tools[{i}].function.parameters must be a JSON schema object")
    return tools


def chat_call(args: Mapping[str, Any], defaults: GenerationDefaults) -> GenerationCall:
    messages = _typed(args, "messages", (list,), "a list of {role, content} objects",
                      required=True)
    if not messages:
        raise InvalidArguments("'messages' must not be empty")
    passed = [_chat_message(i, message) for i, message in enumerate(messages)]
    body = _common_body(args, defaults)
    system = _typed(args, "system", (str,), "a string")
    body["messages"] = ([{"role": "system", "content": system}] if system else []) + passed
    tools = _tools(args)
    if tools:
        body["tools"] = tools
    return GenerationCall("/api/chat", body)


def batch_prompts(args: Mapping[str, Any], max_batch: int) -> list[str]:
    prompts = _typed(args, "prompts", (list,), "a list of strings", required=True)
    if not 1 <= len(prompts) <= max_batch:
        raise InvalidArguments(f"'prompts' must hold 1 to {max_batch} prompts")
    if not all(isinstance(p, str) for p in prompts):
        raise InvalidArguments("'prompts' must be a list of strings")
    return prompts


@dataclass(frozen=True)
class PullArguments:
    #: As the admin wrote it: Ollama parses it (a registry host, namespace and tag included).
    model: str
    #: Ollama's own flag: speak plain http to the model's registry.
    insecure: bool


def pull_arguments(args: Mapping[str, Any]) -> PullArguments:
    model = _typed(args, "model", (str,), "a model name such as llama3.1:8b or "
                   "HOST:PORT/NAMESPACE/MODEL:TAG", required=True)
    if not model.strip() or len(model) > MAX_MODEL_NAME:
        raise InvalidArguments(f"'model' must be a model name of 1 to {MAX_MODEL_NAME} "
                               "characters")
    insecure = _typed(args, "insecure", (bool,), "true or false") or False
    return PullArguments(model.strip(), insecure)


def embed_body(args: Mapping[str, Any], defaults: GenerationDefaults,
               max_inputs: int) -> dict[str, Any]:
    value = _typed(args, "input", (str, list), "a string or a list of strings", required=True)
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise InvalidArguments("'input' must be a string or a list of strings")
    if isinstance(value, list) and not 1 <= len(value) <= max_inputs:
        # Each input is a vector in the reply: the reply, not the request, is
        # what grows (4,000 inputs made a 154 MB reply).
        raise OllamaFailure(ErrorCode.TOO_LARGE, f"'input' must hold 1 to {max_inputs} strings "
                            f"(max_embed_inputs); split longer lists", retryable=False)
    model = _typed(args, "model", (str,), "a string") or defaults.model
    body: dict[str, Any] = {"model": model, "input": value}
    options = defaults.runner.configured(model)
    if options:   # runner options are part of a loaded embedding model too
        body["options"] = options
    keep_alive = _keep_alive(args)
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return body
