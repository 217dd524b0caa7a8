"""/api/generate, /api/chat, /api/embed and /api/embeddings: the inference endpoints.

The order of checks follows Ollama's handlers (decode, model, unload,
capabilities, options, schedule, load-only answer, inference) because it
decides which error a client sees first. Durations are measured, not
invented: load, prompt evaluation and each token really take the configured
time, so `total_duration >= load + prompt_eval + eval` and
`eval_count / eval_duration` is the configured speed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ollamad.testing.standin import apitypes, gojson, textgen
from ollamad.testing.standin.apitypes import MODEL_CRASHED, ApiError, not_found
from ollamad.testing.standin.catalog import Catalog, Model
from ollamad.testing.standin.config import Settings
from ollamad.testing.standin.faults import FaultBook
from ollamad.testing.standin.gotime import NS_PER_S, utc_now
from ollamad.testing.standin.httpserver import JSON, Exchange
from ollamad.testing.standin.runners import Runner, RunnerPool
from ollamad.testing.standin.scheduler import Scheduler
from ollamad.testing.standin.stats import Stats

# Options that change what a model samples (and so the answer); seed only when sampling.
_SAMPLING = ("temperature", "top_k", "top_p", "min_p", "typical_p", "tfs_z", "repeat_penalty",
             "presence_penalty", "frequency_penalty", "mirostat", "mirostat_tau",
             "mirostat_eta", "repeat_last_n", "penalize_newline")


@dataclass
class _Turn:
    """One generate or chat request, validated."""

    chat: bool
    name: str  # the model name as the client sent it (echoed back)
    model: Model
    stream: bool
    keep_alive: int | None
    options: dict[str, Any]
    prompt: str  # the rendered prompt
    format: Any
    context: list[int] | None = field(default=None)  # None: no context in the answer

    @property
    def has_input(self) -> bool:
        return bool(self.prompt)

    def key(self) -> str:
        sampling = {name: self.options[name] for name in _SAMPLING}
        if self.options["temperature"] != 0:
            sampling["seed"] = self.options["seed"]
        return json.dumps([self.model.name, self.prompt, self.context or [], sampling],
                          sort_keys=True)

    def chunk(self, piece: str) -> dict:
        if self.chat:
            return {"model": self.name, "created_at": utc_now(),
                    "message": {"role": "assistant", "content": piece}, "done": False}
        return {"model": self.name, "created_at": utc_now(), "response": piece, "done": False}

    def done(self, text: str, reason: str, metrics: dict | None = None,
             context: list[int] | None = None) -> dict:
        metrics = {name: value for name, value in (metrics or {}).items() if value}
        if self.chat:
            return {"model": self.name, "created_at": utc_now(),
                    "message": {"role": "assistant", "content": text},
                    "done_reason": reason, "done": True, **metrics}
        answer = {"model": self.name, "created_at": utc_now(), "response": text,
                  "done": True, "done_reason": reason}
        if context:
            answer["context"] = context
        answer.update(metrics)
        return answer


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


def _limit(pieces: tuple[str, ...], options: dict) -> tuple[list[str], str, int]:
    """Apply num_predict and stop: (pieces to emit, done_reason, tokens generated)."""
    emitted, reason = list(pieces), "stop"
    if 0 < options["num_predict"] <= len(emitted):
        emitted, reason = emitted[:options["num_predict"]], "length"
    generated = len(emitted)
    text = "".join(emitted)
    found = [(text.find(stop), text.find(stop) + len(stop))
             for stop in options["stop"] if stop and stop in text]
    if found:
        cut, stop_end = min(found)
        kept, position, generated = [], 0, 0
        for piece in emitted:
            if position < cut:
                kept.append(piece[:cut - position])
            position += len(piece)
            generated += 1
            if position >= stop_end:
                break
        emitted, reason = [piece for piece in kept if piece], "stop"
    return emitted, reason, generated


class _Reply:
    """Where tokens go: an NDJSON stream, or collected for one JSON answer."""

    def __init__(self, exchange: Exchange, turn: _Turn):
        self._exchange = exchange
        self._turn = turn
        self._stream = exchange.stream() if turn.stream else None
        self.pieces: list[str] = []

    def token(self, piece: str):
        self.pieces.append(piece)
        if self._stream is not None:
            self._stream.write(self._turn.chunk(piece))

    def finish(self, answer: dict):
        if self._stream is None:
            self._exchange.send_json(200, answer)
        else:
            self._stream.write(answer, last=True)

    def fail(self, error: ApiError):
        if self._stream is None:
            self._exchange.send_error(500 if error.from_runner else error.status, error.message)
        elif self._stream.started:  # too late for a status: a last line says it
            self._stream.write({"error": error.message}, last=True)
        else:
            content_type = "application/json" if error.from_runner else JSON
            self._exchange.send_error(error.status, error.message, content_type)


class Inference:
    def __init__(self, settings: Settings, catalog: Catalog, pool: RunnerPool,
                 scheduler: Scheduler, faults: FaultBook, stats: Stats):
        self._settings = settings
        self._catalog = catalog
        self._pool = pool
        self._scheduler = scheduler
        self._faults = faults
        self._stats = stats

    # --- endpoints -------------------------------------------------------------

    def generate(self, exchange: Exchange):
        started = time.monotonic_ns()
        request = apitypes.decode(exchange.body, apitypes.GENERATE)
        name = request.get("model", "")
        model = self._catalog.find(name)
        if model is None:
            raise not_found(name)
        prompt, keep_alive = request.get("prompt", ""), request.get("keep_alive")
        if not prompt and apitypes.unloads_now(keep_alive):
            return self._unload(exchange, model, {"model": name, "created_at": utc_now(),
                                                  "response": "", "done": True})
        raw = request.get("raw", False)
        if raw and (request.get("template") or request.get("system") or request.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")
        if model.embedding_only:
            raise ApiError(400, f'"{name}" does not support generate')
        parts = [prompt] if raw else [request.get(k, "") for k in ("system", "template", "prompt")]
        if prompt and request.get("suffix"):
            parts.append(request["suffix"])
        turn = _Turn(chat=False, name=name, model=model, stream=request.get("stream", True),
                     keep_alive=keep_alive, options=apitypes.options(request.get("options")),
                     prompt="\n".join(part for part in parts if part) if prompt else "",
                     format=request.get("format"),
                     context=None if raw else list(request.get("context", [])))
        self._serve_turn(exchange, turn, started)

    def chat(self, exchange: Exchange):
        started = time.monotonic_ns()
        request = apitypes.decode(exchange.body, apitypes.CHAT)
        name = request.get("model", "")
        if not name:
            raise ApiError(400, apitypes.MODEL_REQUIRED)
        model = self._catalog.find(name)
        if model is None:
            raise not_found(name)
        messages, keep_alive = request.get("messages", []), request.get("keep_alive")
        if not messages and apitypes.unloads_now(keep_alive):
            return self._unload(exchange, model, {
                "model": name, "created_at": utc_now(),
                "message": {"role": "assistant", "content": ""}, "done": True})
        if model.embedding_only:
            raise ApiError(400, f'"{name}" does not support chat')
        prompt = "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in messages)
        turn = _Turn(chat=True, name=name, model=model, stream=request.get("stream", True),
                     keep_alive=keep_alive, options=apitypes.options(request.get("options")),
                     prompt=prompt, format=request.get("format"))
        self._serve_turn(exchange, turn, started)

    def embed(self, exchange: Exchange):
        request = apitypes.decode(exchange.body, apitypes.EMBED)
        value = request.get("input")
        if isinstance(value, str) or value is None:
            inputs = [value] if value else []
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            inputs = value
        else:
            raise ApiError(400, "invalid input type")
        self._embed(exchange, request, inputs, legacy=False)

    def embeddings(self, exchange: Exchange):
        """The deprecated single-prompt endpoint (the official client still has it)."""
        request = apitypes.decode(exchange.body, apitypes.EMBEDDINGS)
        if not request.get("model"):
            raise ApiError(400, apitypes.MODEL_REQUIRED)
        prompt = request.get("prompt", "")
        self._embed(exchange, request, [prompt] if prompt else [], legacy=True)

    # --- shared flow -------------------------------------------------------------

    def _unload(self, exchange: Exchange, model: Model, answer: dict):
        self._pool.unload(model)
        answer["done_reason"] = "unload"
        exchange.send_json(200, answer)

    def _wait_out_hang(self, exchange: Exchange):
        """The `hang` fault: say nothing until faults are cleared or the client leaves."""
        epoch = self._faults.epoch
        if self._faults.take("hang"):
            exchange.peer.wait_for(lambda: self._faults.epoch != epoch)

    def _serve_turn(self, exchange: Exchange, turn: _Turn, started: int):
        # The runner is checked in (slot freed, keep-alive expiry set) before the last
        # bytes go out: a client that reads /api/ps right after its answer sees it.
        runner = self._scheduler.checkout(turn.model, turn.keep_alive, exchange.peer.gone)
        loaded = time.monotonic_ns()
        reply = _Reply(exchange, turn) if turn.has_input else None
        failure: ApiError | None = None
        try:
            if reply is None:
                answer = turn.done("", "load")
            else:
                with self._scheduler.slot(runner, exchange.peer.gone):
                    answer = self._infer(exchange, turn, runner, reply, started, loaded)
        except ApiError as error:
            failure = error
        finally:
            self._scheduler.checkin(runner)
        if reply is None:
            exchange.send_json(200, answer)
        elif failure is not None:
            reply.fail(failure)
        else:
            reply.finish(answer)

    def _evaluate_prompt(self, exchange: Exchange, tokens: int) -> tuple[int, int]:
        """Spend the prompt-evaluation time; returns its (start, end) in ns."""
        start = time.monotonic_ns()
        if self._settings.prompt_rate:
            exchange.peer.sleep_until(start / NS_PER_S + tokens / self._settings.prompt_rate)
        return start, time.monotonic_ns()

    def _crash(self, runner: Runner):
        self._pool.crash(runner)
        raise ApiError(500, MODEL_CRASHED, from_runner=True)

    def _infer(self, exchange: Exchange, turn: _Turn, runner: Runner, reply: _Reply,
               started: int, loaded: int) -> dict:
        """Produce the tokens into `reply`; returns the final answer, still to be sent."""
        self._wait_out_hang(exchange)
        pieces = textgen.answer(turn.key(), _format_key(turn.format))
        emitted, reason, generated = _limit(pieces, turn.options)
        crash = self._faults.take("crash_mid_stream")
        crash_after = crash.params["after_tokens"] if crash else None
        prompt_tokens = textgen.tokenize(turn.prompt)
        prompt_count = len(prompt_tokens) + len(turn.context or [])
        eval_start, eval_end = self._evaluate_prompt(exchange, prompt_count)
        delay = self._settings.token_delay
        for index, piece in enumerate(emitted):
            if crash_after is not None and index >= crash_after:
                self._crash(runner)
            if delay:
                exchange.peer.sleep_until(eval_end / NS_PER_S + (index + 1) * delay)
            if not runner.alive:
                raise ApiError(500, MODEL_CRASHED, from_runner=True)
            reply.token(piece)
        if crash_after is not None:
            self._crash(runner)
        finished = time.monotonic_ns()
        metrics = {
            "total_duration": finished - started, "load_duration": loaded - started,
            "prompt_eval_count": prompt_count, "prompt_eval_duration": eval_end - eval_start,
            "eval_count": generated, "eval_duration": finished - eval_end,
        }
        context = None
        if turn.context is not None:
            context = turn.context + textgen.token_ids(prompt_tokens + reply.pieces)
        text = "" if turn.stream else "".join(reply.pieces)
        self._stats.completed_generation()
        return turn.done(text, reason, metrics, context)

    def _embed(self, exchange: Exchange, request: dict, inputs: list[str], legacy: bool):
        started = time.monotonic_ns()
        name = request.get("model", "")
        model = self._catalog.find(name)
        if model is None:
            raise not_found(name)
        apitypes.options(request.get("options"))
        runner = self._scheduler.checkout(model, request.get("keep_alive"), exchange.peer.gone)
        loaded = time.monotonic_ns()
        try:
            if not inputs:
                body = gojson.dumps({"embedding": []} if legacy
                                    else {"model": name, "embeddings": []})
            else:
                with self._scheduler.slot(runner, exchange.peer.gone):
                    body = self._embedding_body(exchange, runner, name, model, inputs,
                                                legacy, started, loaded)
        finally:
            self._scheduler.checkin(runner)
        exchange.send(200, body, JSON)

    def _embedding_body(self, exchange: Exchange, runner: Runner, name: str, model: Model,
                        inputs: list[str], legacy: bool, started: int, loaded: int) -> bytes:
        self._wait_out_hang(exchange)
        if self._faults.take("crash_mid_stream"):
            self._crash(runner)
        count = sum(len(textgen.tokenize(text)) for text in inputs)
        self._evaluate_prompt(exchange, count)
        if not runner.alive:
            raise ApiError(500, MODEL_CRASHED)
        vectors = [textgen.embedding_json(model.name, text, model.embedding_length)
                   for text in inputs]
        if legacy:
            return ('{"embedding":' + vectors[0] + "}").encode()
        total = time.monotonic_ns() - started
        return (f'{{"model":{gojson.dumps(name).decode()},"embeddings":[' + ",".join(vectors)
                + f'],"total_duration":{total},"load_duration":{loaded - started},'
                f'"prompt_eval_count":{count}}}').encode("utf-8")
