"""Ollama's request types (api/types.go) and how it validates them.

Request bodies decode into these Go structs (field types decide the 400
texts), `keep_alive` goes through api.Duration's UnmarshalJSON, and `options`
through Options.FromMap, whose type errors are 500s. Messages that clients
match on live here as constants, byte for byte.
"""

from __future__ import annotations

from typing import Any

from ollamad import goduration
from ollamad.testing.standin import gojson
from ollamad.testing.standin.gojson import ANY, BOOL, DURATION, INT, MAP, RAW, STRING

SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_TERMINATED = "llama-server process has terminated: exit status 2"
MODEL_CRASHED = "an error was encountered while running the model: unexpected EOF"
RUNNER_STOPPED = ("model runner has unexpectedly stopped, this may be due to resource "
                  "limitations or an internal error, check ollama server logs for details")
LOAD_TIMED_OUT = "timed out waiting for llama-server to start - "
LOAD_ABORTED = "client connection closed before llama-server finished loading, aborting load"
MODEL_REQUIRED = "model is required"
MISSING_BODY = "missing request body"
REQUEST_CANCELED = "request canceled"


class ApiError(Exception):
    """An error answer: HTTP status and the `error` text.

    `from_runner` marks errors that surface while a streamed answer is being
    produced: Ollama reports those inside the NDJSON stream (or, when nothing
    was streamed yet, with `Content-Type: application/json`).
    """

    def __init__(self, status: int, message: str, *, from_runner: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.from_runner = from_runner


class ClientGone(Exception):
    """The HTTP client went away; nobody is left to answer."""


def not_found(name: str) -> ApiError:
    return ApiError(404, f"model '{name}' not found")


_IMAGES = gojson.slice_of(STRING, "[]api.ImageData")
_TOOL_CALL = gojson.struct("api.ToolCall", id=STRING, function=gojson.struct(
    "api.ToolCallFunction", index=INT, name=STRING, arguments=MAP))
_MESSAGE = gojson.struct("api.Message", role=STRING, content=STRING, thinking=STRING,
                         images=_IMAGES, tool_calls=gojson.slice_of(_TOOL_CALL, "[]api.ToolCall"),
                         tool_name=STRING, tool_call_id=STRING)
_TOOL = gojson.struct("api.Tool", type=STRING, function=gojson.struct(
    "api.ToolFunction", name=STRING, description=STRING, parameters=ANY))
_THINK = gojson.GoType("api.ThinkValue", "any")

GENERATE = gojson.struct(
    "api.GenerateRequest", model=STRING, prompt=STRING, suffix=STRING, system=STRING,
    template=STRING, context=gojson.slice_of(INT), stream=BOOL, raw=BOOL, format=RAW,
    keep_alive=DURATION, images=_IMAGES, options=MAP, think=_THINK)
CHAT = gojson.struct(
    "api.ChatRequest", model=STRING, messages=gojson.slice_of(_MESSAGE), stream=BOOL,
    format=RAW, keep_alive=DURATION, tools=gojson.slice_of(_TOOL, "api.Tools"), options=MAP,
    think=_THINK)
EMBED = gojson.struct(
    "api.EmbedRequest", model=STRING, input=ANY, keep_alive=DURATION, truncate=BOOL,
    options=MAP)
EMBEDDINGS = gojson.struct(
    "api.EmbeddingRequest", model=STRING, prompt=STRING, keep_alive=DURATION, options=MAP)
SHOW = gojson.struct(
    "api.ShowRequest", model=STRING, system=STRING, template=STRING, verbose=BOOL,
    options=MAP, name=STRING)
PULL = gojson.struct(
    "api.PullRequest", model=STRING, insecure=BOOL, username=STRING, password=STRING,
    stream=BOOL, name=STRING)
COPY = gojson.struct("api.CopyRequest", source=STRING, destination=STRING)
DELETE = gojson.struct("api.DeleteRequest", model=STRING, name=STRING)


def decode(body: bytes, go_type: gojson.GoType) -> dict[str, Any]:
    """The request's fields, or ApiError(400) with Ollama's text."""
    try:
        fields = gojson.decode_struct(body, go_type)
    except gojson.EmptyBody:
        raise ApiError(400, MISSING_BODY) from None
    except gojson.DecodeError as exc:
        raise ApiError(400, str(exc)) from None
    if "keep_alive" in fields:
        fields["keep_alive"] = keep_alive_ns(fields["keep_alive"])
    if "think" in fields:
        fields["think"] = think_value(fields["think"])
    return fields


_THINK_LEVELS = ("high", "medium", "low", "max")


def think_value(value: Any) -> bool | str:
    """api.ThinkValue.UnmarshalJSON: a bool or one of the levels."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in _THINK_LEVELS:
            return value
        raise ApiError(400, f'invalid think value: {gojson.dumps(value).decode()} (must be '
                            '"high", "medium", "low", "max", true, or false)')
    raise ApiError(400, 'think must be a boolean or string ("high", "medium", "low", "max", '
                        "true, or false)")


def keep_alive_ns(value: Any) -> int:
    """api.Duration.UnmarshalJSON: seconds (fractions too) or a Go duration string with a
    unit; negative = forever."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ApiError(400, f"Unsupported type: '{gojson.go_type_name(value)}'")
    try:
        return goduration.keep_alive_ns(value)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def unloads_now(keep_alive: int | None) -> bool:
    """Ollama unloads when `keep_alive.Duration == 0` (before v0.30: under a second)."""
    return keep_alive == 0


# Options.FromMap: name -> (kind, default), the fields of api.Options in v0.33. Unknown
# names (also those older versions had: numa, low_vram, mirostat, tfs_z, ...) are ignored.
# num_ctx None: automatic (see runneroptions); main_gpu and use_mmap are Go pointers.
_OPTIONS: dict[str, tuple[str, Any]] = {
    "num_ctx": ("int", None), "num_batch": ("int", 512), "num_gpu": ("int", -1),
    "main_gpu": ("int", None), "use_mmap": ("bool", None), "num_thread": ("int", 0),
    "draft_num_predict": ("int", 4), "num_keep": ("int", 4), "seed": ("int", -1),
    "num_predict": ("int", -1), "top_k": ("int", 40), "top_p": ("float", 0.9),
    "min_p": ("float", 0.0), "typical_p": ("float", 1.0), "repeat_last_n": ("int", 64),
    "temperature": ("float", 0.8), "repeat_penalty": ("float", 1.0),
    "presence_penalty": ("float", 0.0), "frequency_penalty": ("float", 0.0),
    "stop": ("array", []),
}
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty",
            "presence_penalty", "frequency_penalty", "repeat_last_n")
_KIND_WORD = {"int": "integer", "bool": "boolean", "float": "float32", "array": "array"}


def options(requested: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults overlaid with the request's options; ApiError(500) on a wrong type."""
    effective = {name: default for name, (_, default) in _OPTIONS.items()}
    for name, value in (requested or {}).items():
        if name not in _OPTIONS or value is None:
            continue
        kind = _OPTIONS[name][0]
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind in ("int", "float") and is_number:
            effective[name] = int(value) if kind == "int" else float(value)
        elif kind == "bool" and isinstance(value, bool):
            effective[name] = value
        elif kind == "array" and isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ApiError(500, f'option "{name}" must be of an array of strings')
            effective[name] = value
        else:
            raise ApiError(500, f'option "{name}" must be of type {_KIND_WORD[kind]}')
    return effective
