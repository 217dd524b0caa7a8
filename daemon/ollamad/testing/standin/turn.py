"""One generate or chat request, validated, and what the pretend model answers to it.

The answer is planned up front and is deterministic in the request
(`textgen`): for a model with the `thinking` capability and `think` on (its
default), reasoning first; then the content or, for a chat with tools, a
tool call (`tools`). `num_predict` counts every generated token, the
reasoning included, so a small one can be spent on the reasoning alone
(done_reason "length", empty content); stop sequences end the content.
Answers are shaped like Ollama's GenerateResponse and ChatResponse, field
order included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ollamad.testing.standin import apitypes, textgen, tools
from ollamad.testing.standin.apitypes import ApiError
from ollamad.testing.standin.catalog import Model
from ollamad.testing.standin.gotime import utc_now
from ollamad.testing.standin.runneroptions import RunnerOptions

THINKING, CONTENT, TOOL = "thinking", "content", "tool"


@dataclass
class Plan:
    """What the model generates: (kind, piece) steps, in order, and how it ends."""

    steps: list[tuple[str, str]]
    reason: str           # done_reason
    generated: int        # eval_count
    tool_calls: list[dict]

    def text(self, kind: str) -> str:
        return "".join(piece for step, piece in self.steps if step == kind)


def _format_key(value: Any) -> str | None:
    """The format as textgen takes it; ApiError like Ollama's runner for a bad one."""
    if value is None or value == "":
        return None
    if value == "json":
        return '"json"'
    if not isinstance(value, dict):
        raw = json.dumps(value)
        raise ApiError(500, f'invalid format: {json.dumps(raw)}; expected "json" or a valid '
                            "JSON Schema object", from_runner=True)
    return json.dumps(value)  # key order kept: answers follow the schema's property order


def _cut_at_stop(pieces: list[str], stops: list[str]) -> tuple[list[str], int] | None:
    """(pieces before the first stop sequence, tokens generated up to its end), or None."""
    text = "".join(pieces)
    found = [(text.find(stop), text.find(stop) + len(stop)) for stop in stops
             if stop and stop in text]
    if not found:
        return None
    cut, stop_end = min(found)
    kept, position, generated = [], 0, 0
    for piece in pieces:
        if position < cut:
            kept.append(piece[:cut - position])
        position += len(piece)
        generated += 1
        if position >= stop_end:
            break
    return [piece for piece in kept if piece], generated


@dataclass
class Turn:
    """A generate or chat request, validated."""

    chat: bool
    name: str  # the model name as the client sent it (echoed back)
    model: Model
    stream: bool
    keep_alive: int | None
    options: dict[str, Any]
    runner_options: RunnerOptions
    prompt: str  # the rendered prompt
    format: Any
    think: bool
    tools: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    context: list[int] | None = None  # None: no context in the answer

    @property
    def has_input(self) -> bool:
        return bool(self.prompt)

    def key(self) -> str:
        sampling = {name: self.options[name] for name in apitypes.SAMPLING}
        if self.options["temperature"] != 0:
            sampling["seed"] = self.options["seed"]
        return json.dumps([self.model.name, self.prompt, self.context or [], sampling,
                           self.tools], sort_keys=True)

    def plan(self) -> Plan:
        key = self.key()
        thinking = list(textgen.reasoning(key)) if self.think else []
        call = tools.choose(self.tools, self.messages, key) if self.tools else None
        if call is not None:
            kind, pieces = TOOL, textgen.tokenize(json.dumps(call))
        else:
            kind, pieces = CONTENT, list(textgen.answer(key, _format_key(self.format)))
        budget = self.options["num_predict"] if self.options["num_predict"] > 0 else None
        if budget is not None and budget <= len(thinking):
            return Plan([(THINKING, piece) for piece in thinking[:budget]], "length", budget, [])
        reason, generated = "stop", len(thinking) + len(pieces)
        if budget is not None and budget - len(thinking) < len(pieces):
            pieces, reason, generated = pieces[:budget - len(thinking)], "length", budget
        elif kind == CONTENT and (cut := _cut_at_stop(pieces, self.options["stop"])):
            pieces, generated = cut[0], len(thinking) + cut[1]
        if kind == TOOL and reason == "length":
            kind = CONTENT  # a call cut short is no call: Ollama hands back the text
        tool_calls = [tools.as_tool_call(call, key)] if kind == TOOL else []
        steps = [(THINKING, piece) for piece in thinking] + [(kind, piece) for piece in pieces]
        return Plan(steps, reason, generated, tool_calls)

    def _message(self, content: str, thinking: str, tool_calls: list[dict]) -> dict:
        message = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        return message

    def chunk(self, content: str = "", thinking: str = "", tool_calls: list[dict] = ()) -> dict:
        head = {"model": self.name, "created_at": utc_now()}
        if self.chat:
            return {**head, "message": self._message(content, thinking, list(tool_calls)),
                    "done": False}
        head["response"] = content
        if thinking:
            head["thinking"] = thinking
        return {**head, "done": False}

    def done(self, reason: str, plan: Plan | None = None, metrics: dict | None = None,
             context: list[int] | None = None) -> dict:
        """The last answer: the whole text when not streamed (the stream carried it)."""
        whole = plan is not None and not self.stream
        content, thinking = (plan.text(CONTENT), plan.text(THINKING)) if whole else ("", "")
        tool_calls = plan.tool_calls if whole else []
        answer = self.chunk(content, thinking, tool_calls)
        answer["done"] = True
        answer["done_reason"] = reason
        if context:
            answer["context"] = context
        answer.update({name: value for name, value in (metrics or {}).items() if value})
        return answer
