"""/api/generate, /api/chat, /api/embed and /api/embeddings: the inference endpoints.

The order of checks follows Ollama's handlers (decode, model, unload,
capabilities, options, schedule, load-only answer, inference) because it
decides which error a client sees first. The tokens come from the runner
process (`runnerprocess`): a stopped runner stalls the answer, a killed one
breaks it. Durations are measured, not invented: load, prompt evaluation
and each token really take the configured time (longer for a runner partly
on the CPU, see `memory`), so `total_duration >= load + prompt_eval + eval`
and `eval_count / eval_duration` is the configured speed.
"""

from __future__ import annotations

import time
from contextlib import closing

from ollamad.testing.standin import apitypes, gojson, textgen
from ollamad.testing.standin.apitypes import MODEL_CRASHED, ApiError, not_found
from ollamad.testing.standin.catalog import Catalog, Model
from ollamad.testing.standin.config import Settings
from ollamad.testing.standin.faults import Fault, FaultBook
from ollamad.testing.standin.gotime import utc_now
from ollamad.testing.standin.httpserver import JSON, Exchange
from ollamad.testing.standin.memory import default_num_ctx
from ollamad.testing.standin.runneroptions import RunnerOptions
from ollamad.testing.standin.runners import Runner, RunnerPool
from ollamad.testing.standin.scheduler import Scheduler
from ollamad.testing.standin.stats import Stats
from ollamad.testing.standin.turn import CONTENT, TOOL, Plan, Turn


class _Reply:
    """Where tokens go: an NDJSON stream, or nowhere until the one JSON answer."""

    def __init__(self, exchange: Exchange, turn: Turn):
        self._exchange = exchange
        self._turn = turn
        self._stream = exchange.stream() if turn.stream else None

    def step(self, kind: str, piece: str):
        if self._stream is None or kind == TOOL:  # Ollama's tool parser holds calls back
            return
        chunk = self._turn.chunk(piece) if kind == CONTENT else self._turn.chunk(thinking=piece)
        self._stream.write(chunk)

    def tool_calls(self, calls: list[dict]):
        if self._stream is not None:
            self._stream.write(self._turn.chunk(tool_calls=calls))

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


def _think(model: Model, name: str, requested: bool | str | None) -> bool:
    """Whether the model thinks: by default when it can; 400 when asked and it cannot."""
    if "thinking" in model.capabilities:
        return requested is None or requested is not False
    if requested not in (None, False):
        raise ApiError(400, f"{gojson.dumps(name).decode()} does not support thinking")
    return False


class Inference:
    def __init__(self, settings: Settings, catalog: Catalog, pool: RunnerPool,
                 scheduler: Scheduler, faults: FaultBook, stats: Stats):
        self._settings = settings
        self._catalog = catalog
        self._pool = pool
        self._scheduler = scheduler
        self._faults = faults
        self._stats = stats
        self._automatic_num_ctx = default_num_ctx(settings.vram)

    def _options(self, model: Model, requested: dict | None) -> tuple[dict, RunnerOptions]:
        effective = apitypes.options(requested)
        return effective, RunnerOptions.of(model, effective, requested or {},
                                           self._settings.context_length, self._automatic_num_ctx)

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
        think = _think(model, name, request.get("think"))
        if model.embedding_only:
            raise ApiError(400, f'"{name}" does not support generate')
        parts = [prompt] if raw else [request.get(k, "") for k in ("system", "template", "prompt")]
        if prompt and request.get("suffix"):
            parts.append(request["suffix"])
        options, runner_options = self._options(model, request.get("options"))
        turn = Turn(chat=False, name=name, model=model, stream=request.get("stream", True),
                    keep_alive=keep_alive, options=options, runner_options=runner_options,
                    prompt="\n".join(part for part in parts if part) if prompt else "",
                    format=request.get("format"), think=think,
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
        think = _think(model, name, request.get("think"))
        if model.embedding_only:
            raise ApiError(400, f'"{name}" does not support chat')
        tools = request.get("tools") or []
        if tools and "tools" not in model.capabilities:
            raise ApiError(400, f"{model.full_name} does not support tools")
        prompt = "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in messages)
        options, runner_options = self._options(model, request.get("options"))
        turn = Turn(chat=True, name=name, model=model, stream=request.get("stream", True),
                    keep_alive=keep_alive, options=options, runner_options=runner_options,
                    prompt=prompt, format=request.get("format"), think=think, tools=tools,
                    messages=messages)
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

    def _wait_out_hang(self, exchange: Exchange, hang: Fault | None = None):
        """The `hang` fault: say nothing until faults are cleared or the client leaves.

        `hang`: the fault already taken (one that strikes mid-stream); else it is taken now.
        """
        epoch = self._faults.epoch
        if hang or self._faults.take("hang"):
            exchange.peer.wait_for(lambda: self._faults.epoch != epoch)

    def _serve_turn(self, exchange: Exchange, turn: Turn, started: int):
        # The runner is checked in (slot freed, keep-alive expiry set) before the last
        # bytes go out: a client that reads /api/ps right after its answer sees it.
        runner = self._scheduler.checkout(turn.model, turn.runner_options, turn.keep_alive,
                                          exchange.peer.gone)
        loaded = time.monotonic_ns()
        reply = _Reply(exchange, turn) if turn.has_input else None
        failure: ApiError | None = None
        try:
            if reply is None:
                answer = turn.done("load")
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

    def _runner_request(self, runner: Runner, prompt_tokens: int, pieces: list[str]) -> dict:
        """What the runner is asked to do, at the speed its placement allows."""
        slowdown = runner.placement.slowdown
        rate = self._settings.prompt_rate
        return {"prompt_seconds": prompt_tokens / rate * slowdown if rate else 0.0,
                "token_seconds": self._settings.token_delay * slowdown, "pieces": pieces}

    def _crash(self, runner: Runner):
        self._pool.crash(runner)
        raise ApiError(500, MODEL_CRASHED, from_runner=True)

    def _infer(self, exchange: Exchange, turn: Turn, runner: Runner, reply: _Reply,
               started: int, loaded: int) -> dict:
        """Stream the runner's tokens into `reply`; returns the final answer, still to be sent."""
        hang = self._faults.take("hang")
        hang_after = hang.params["after_tokens"] if hang else None
        if hang_after == 0:   # before the first token: Ollama never answers
            self._wait_out_hang(exchange, hang)
        plan: Plan = turn.plan()
        crash = self._faults.take("crash_mid_stream")
        crash_after = crash.params["after_tokens"] if crash else None
        prompt_tokens = textgen.tokenize(turn.prompt)
        prompt_count = len(prompt_tokens) + len(turn.context or [])
        request = self._runner_request(runner, prompt_count, [piece for _, piece in plan.steps])
        eval_start = eval_end = time.monotonic_ns()
        emitted = 0
        with closing(runner.complete(request, exchange.peer.gone)) as events:
            for event in events:
                if "prompt_done" in event:
                    eval_end = time.monotonic_ns()
                elif "piece" in event:
                    if crash_after is not None and emitted >= crash_after:
                        self._crash(runner)
                    if hang_after and emitted == hang_after:   # mid-stream: it stops coming
                        self._wait_out_hang(exchange, hang)
                    reply.step(plan.steps[emitted][0], event["piece"])
                    emitted += 1
        if crash_after is not None:
            self._crash(runner)
        if plan.tool_calls:
            reply.tool_calls(plan.tool_calls)
        finished = time.monotonic_ns()
        metrics = {
            "total_duration": finished - started, "load_duration": loaded - started,
            "prompt_eval_count": prompt_count, "prompt_eval_duration": eval_end - eval_start,
            "eval_count": plan.generated, "eval_duration": finished - eval_end,
        }
        context = None
        if turn.context is not None:
            answered = [piece for kind, piece in plan.steps if kind == CONTENT]
            context = turn.context + textgen.token_ids(prompt_tokens + answered)
        self._stats.completed_generation()
        return turn.done(plan.reason, plan, metrics, context)

    def _embed(self, exchange: Exchange, request: dict, inputs: list[str], legacy: bool):
        started = time.monotonic_ns()
        name = request.get("model", "")
        model = self._catalog.find(name)
        if model is None:
            raise not_found(name)
        _, runner_options = self._options(model, request.get("options"))
        runner = self._scheduler.checkout(model, runner_options, request.get("keep_alive"),
                                          exchange.peer.gone)
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
        try:
            for _ in runner.complete(self._runner_request(runner, count, []), exchange.peer.gone):
                pass
        except ApiError as error:
            raise ApiError(500, error.message) from None  # embed answers plain JSON errors
        vectors = [textgen.embedding_json(model.name, text, model.embedding_length)
                   for text in inputs]
        if legacy:
            return ('{"embedding":' + vectors[0] + "}").encode()
        total = time.monotonic_ns() - started
        return (f'{{"model":{gojson.dumps(name).decode()},"embeddings":[' + ",".join(vectors)
                + f'],"total_duration":{total},"load_duration":{loaded - started},'
                f'"prompt_eval_count":{count}}}').encode("utf-8")
