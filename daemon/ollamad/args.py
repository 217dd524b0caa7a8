"""Validation of op arguments, and their translation into Ollama request bodies.

Bad arguments are answered ``bad_request`` with a message naming the field,
before anything reaches Ollama.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ollamad.ollama.runner import RunnerPolicy
from ollamad.retry import OllamaFailure
from ollamad_client import protocol
from ollamad_client.protocol import ErrorCode


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
    keep_alive = _typed(args, "keep_alive", (str, int, float), "a duration string or seconds")
    # Always said: the daemon knows then how long the model stays (ollamad.ollama.loads).
    body["keep_alive"] = defaults.keep_alive if keep_alive is None else keep_alive
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


@dataclass(frozen=True)
class GenerationCall:
    """A validated generate or chat call: where it goes, what it sends, how to read it."""

    path: str
    body: Mapping[str, Any]
    piece: Callable[[Mapping[str, Any]], str]

    def result(self, text: str, final: Mapping[str, Any], attempts: int,
               elapsed: float) -> dict[str, Any]:
        result = _result(text, final, attempts, elapsed)
        if self.path == "/api/chat":
            result["message"] = {"role": "assistant", "content": text}
        return result


def generate_call(args: Mapping[str, Any], defaults: GenerationDefaults,
                  prompt: str | None = None) -> GenerationCall:
    """``prompt`` overrides ``args['prompt']`` (a batch item shares the other args)."""
    body = _common_body(args, defaults)
    body["prompt"] = prompt if prompt is not None else \
        _typed(args, "prompt", (str,), "a string", required=True)
    system = _typed(args, "system", (str,), "a string")
    if system is not None:
        body["system"] = system
    return GenerationCall("/api/generate", body, lambda obj: obj.get("response") or "")


def chat_call(args: Mapping[str, Any], defaults: GenerationDefaults) -> GenerationCall:
    messages = _typed(args, "messages", (list,), "a list of {role, content} objects",
                      required=True)
    if not messages:
        raise InvalidArguments("'messages' must not be empty")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise InvalidArguments(f"messages[{i}] must be an object with string 'role' and 'content'")
        if message["role"] not in CHAT_ROLES:
            raise InvalidArguments(f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}")
    body = _common_body(args, defaults)
    system = _typed(args, "system", (str,), "a string")
    body["messages"] = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": m["role"], "content": m["content"]} for m in messages]
    return GenerationCall("/api/chat", body,
                          lambda obj: (obj.get("message") or {}).get("content") or "")


def batch_prompts(args: Mapping[str, Any], max_batch: int) -> list[str]:
    prompts = _typed(args, "prompts", (list,), "a list of strings", required=True)
    if not 1 <= len(prompts) <= max_batch:
        raise InvalidArguments(f"'prompts' must hold 1 to {max_batch} prompts")
    if not all(isinstance(p, str) for p in prompts):
        raise InvalidArguments("'prompts' must be a list of strings")
    return prompts


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
    keep_alive = _typed(args, "keep_alive", (str, int, float), "a duration string or seconds")
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return body
