"""One registered handler per op.

Handlers run on the I/O thread. Cheap ops (ping, status, metrics, health,
gpu) answer there and then from snapshots; ops that call Ollama validate
their arguments (a bad one is answered at once) and queue tasks on the
worker pool. A full queue is answered ``busy``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Protocol

from ollamad import __version__, args
from ollamad.backend import CallContext, OllamaBackend
from ollamad.exchange import BatchExchange, Exchange
from ollamad.metrics import Metrics
from ollamad.pool import ProgressTracker, Task, WorkerPool
from ollamad.retry import OllamaFailure
from ollamad.server import Peer
from ollamad_client import protocol
from ollamad_client.protocol import Error, ErrorCode

log = logging.getLogger(__name__)


class Introspection(Protocol):
    """What the daemon reports about itself (implemented by the Daemon)."""

    def status(self) -> dict[str, Any]: ...
    def health(self) -> dict[str, Any]: ...
    def metrics(self) -> dict[str, Any]: ...
    def gpu(self) -> dict[str, Any]: ...
    def restart_ollama(self, reason: str) -> dict[str, Any]: ...
    def is_admin(self, peer: Peer) -> bool: ...


#: Longest restart reason kept (it is stored and shown in status).
MAX_REASON = 200

Handler = Callable[["Dispatcher", Exchange, Peer], None]
_HANDLERS: dict[str, Handler] = {}


def handles(op: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _HANDLERS[op] = handler
        return handler
    return register


class Dispatcher:
    def __init__(self, *, pool: WorkerPool, backend: OllamaBackend, metrics: Metrics,
                 progress: ProgressTracker, introspection: Introspection,
                 defaults: args.GenerationDefaults, max_batch: int, max_message_bytes: int):
        self.pool = pool
        self.backend = backend
        self.metrics = metrics
        self.progress = progress
        self.introspection = introspection
        self.defaults = defaults
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes

    def dispatch(self, exchange: Exchange, peer: Peer) -> None:
        handler = _HANDLERS.get(exchange.request.op)
        if handler is None:  # an op the protocol knows but this daemon does not serve
            exchange.reject(Error.of(ErrorCode.UNKNOWN_OP, f"op {exchange.request.op!r} is not served"))
            return
        try:
            handler(self, exchange, peer)
        except OllamaFailure as failure:  # argument validation
            exchange.reject(failure.to_error())
        except Exception as exc:
            log.exception("handler for %s failed", exchange.request.op)
            exchange.reject(Error.of(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))

    # -- helpers for handlers --------------------------------------------

    def submit(self, exchange: Exchange, tasks: list[Task]) -> None:
        if not self.pool.submit(tasks):
            self.metrics.count_busy()
            exchange.reject(Error.of(ErrorCode.BUSY, "the request queue is full; try again shortly"))

    def task(self, exchange: Exchange, work: Callable[[CallContext], Mapping[str, Any]],
             *, generation: bool = False,
             finish: Callable[[Mapping[str, Any] | None, Error | None], None] | None = None) -> Task:
        """A pool task that runs ``work`` and finishes the exchange (or ``finish``)."""

        def done(result: Mapping[str, Any] | None, error: Error | None, attempts: int) -> None:
            if finish is not None:
                finish(result, error)
            elif error is None:
                exchange.resolve(result or {})
            else:
                exchange.attempts = attempts
                exchange.reject(error)

        def run() -> None:
            ctx = CallContext(deadline=exchange.deadline, cancel=exchange.cancel)
            if generation:
                ctx.on_progress = self.progress.touch
                if exchange.request.stream:
                    ctx.on_chunk = lambda text: exchange.send_chunk({"text": text})
                self.progress.begin()
            try:
                done(work(ctx), None, ctx.attempts)
            except OllamaFailure as failure:
                done(None, failure.to_error(), ctx.attempts)
            except Exception as exc:
                log.exception("%s failed", exchange.request.op)
                done(None, Error.of(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"),
                     ctx.attempts)
            finally:
                if generation:
                    self.progress.end()

        def expire(error: Error | None) -> None:
            if finish is not None:
                finish(None, error or Error.of(ErrorCode.TIMEOUT, "the deadline passed while queued"))
            elif error is not None:
                exchange.reject(error)
            else:
                exchange.expire()

        return Task(run=run, expire=expire, deadline=exchange.deadline, cancel=exchange.cancel)


# -- model calls -----------------------------------------------------------

@handles("generate")
def _generate(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    call = args.generate_call(exchange.request.args, d.defaults)
    d.submit(exchange, [d.task(exchange, lambda ctx: d.backend.generate(ctx, call),
                               generation=True)])


@handles("chat")
def _chat(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    call = args.chat_call(exchange.request.args, d.defaults)
    d.submit(exchange, [d.task(exchange, lambda ctx: d.backend.generate(ctx, call),
                               generation=True)])


@handles("batch")
def _batch(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    assert isinstance(exchange, BatchExchange), "the I/O loop makes batch exchanges"
    prompts = args.batch_prompts(exchange.request.args, d.max_batch)
    calls = [args.generate_call(exchange.request.args, d.defaults, prompt=p) for p in prompts]

    def item(index: int, call: args.GenerationCall) -> Task:
        def finish(result: Mapping[str, Any] | None, error: Error | None) -> None:
            exchange.item_done(index, {"ok": True, "result": result} if error is None
                               else {"ok": False, "error": error.to_json()})
        return d.task(exchange, lambda ctx: d.backend.generate(ctx, call),
                      generation=True, finish=finish)

    d.submit(exchange, [item(i, call) for i, call in enumerate(calls)])


@handles("embed")
def _embed(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    body = args.embed_body(exchange.request.args, d.defaults)
    d.submit(exchange, [d.task(exchange, lambda ctx: d.backend.embed(ctx, body))])


@handles("models")
def _models(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    def listing(ctx: CallContext) -> dict[str, Any]:
        return {"models": d.backend.get_json(ctx, "/api/tags").get("models") or [],
                "loaded": d.backend.get_json(ctx, "/api/ps").get("models") or []}
    d.submit(exchange, [d.task(exchange, listing)])


# -- introspection, answered on the I/O thread --------------------------------

@handles("ping")
def _ping(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    exchange.resolve({"protocol": protocol.VERSION, "version": __version__, "pid": os.getpid(),
                      "max_message_bytes": d.max_message_bytes})


def _snapshot_handler(op: str) -> Handler:
    def handler(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
        exchange.resolve(getattr(d.introspection, op)())
    return handler


for _op in ("status", "health", "metrics", "gpu"):
    handles(_op)(_snapshot_handler(_op))


@handles("restart")
def _restart(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    if not d.introspection.is_admin(peer):
        exchange.reject(Error.of(ErrorCode.FORBIDDEN,
                                 "restart is an admin op: root, the daemon's user or the "
                                 "admin group, over an ipc socket"))
        return
    reason = exchange.request.args.get("reason")
    reason = reason if isinstance(reason, str) and reason else f"admin request (pid {peer.pid})"
    # Answered here, never queued behind model calls: an operator needs it
    # most when the workers are stuck. It only posts the request to the
    # supervisor (which runs any restart command on its own thread), and
    # requests read after it wait for the new Ollama.
    try:
        exchange.resolve(d.introspection.restart_ollama(reason[:MAX_REASON]))
    except OllamaFailure as failure:
        exchange.reject(failure.to_error())
