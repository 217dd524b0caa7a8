"""The tool calls a pretend model with the `tools` capability makes, deterministically.

With tools in a chat request the model calls one, unless the last message is
a tool's answer (then it answers in words, so agent loops end): the tool
whose name's words (`get_weather`: get, weather) the last user message
mentions most, the first one on a tie, with arguments that match the tool's
parameter schema. The call is shaped like
Ollama's (api.ToolCall): an id `call_` + 8 characters, the function's index,
name and arguments.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ollamad.testing.standin import textgen

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def choose(tools: list[dict], messages: list[dict], key: str) -> dict | None:
    """The call `{"name", "arguments"}` the model makes, or None when it answers in words."""
    functions = [tool.get("function") or {} for tool in tools]
    functions = [function for function in functions if function.get("name")]
    if not functions or (messages and messages[-1].get("role") == "tool"):
        return None
    asked = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"),
                 "")
    words = set(re.findall(r"[a-z0-9]+", asked.lower()))

    def mentions(function: dict) -> int:
        return len(words.intersection(re.findall(r"[a-z0-9]+", function["name"].lower())))

    chosen = max(functions, key=mentions)  # max keeps the first of equals
    parameters = chosen.get("parameters")
    arguments = textgen.value_for(parameters, key) if isinstance(parameters, dict) else {}
    return {"name": chosen["name"], "arguments": arguments if isinstance(arguments, dict) else {}}


def call_id(key: str) -> str:
    digest = hashlib.sha256(f"tool-call:{key}".encode()).digest()
    return "call_" + "".join(_ID_ALPHABET[byte % len(_ID_ALPHABET)] for byte in digest[:8])


def as_tool_call(call: dict[str, Any], key: str) -> dict:
    return {"id": call_id(key),
            "function": {"index": 0, "name": call["name"], "arguments": call["arguments"]}}
