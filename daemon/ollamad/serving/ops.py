"""One registered handler per op.

Handlers run on the I/O thread. Cheap ops (ping, status, metrics, health,
gpu, cancel, and the admin op restart, which only posts a request to the
supervisor) answer there and then; the admin op pull starts a pull on a
thread of its own (:mod:`ollamad.ollama.pulls`), outside the worker pool and
without an overall deadline; ops that call Ollama validate their
arguments (a bad one is answered at once), pass admission (tenant, lane,
profile, the host's model policy: :mod:`ollamad.scheduling.admission`) and
queue tasks on the worker pool. A full queue (the host's, or the user's
share of it), or queued requests holding more than ``max_queued_bytes``, is
answered ``busy`` with a ``retry_after`` hint; a FATAL Ollama
``unavailable`` at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Mapping, Protocol

from ollamad import __version__, args
from ollamad.backend import CallContext, OllamaBackend
from ollamad.ollama import names
from ollamad.ollama.pulls import PullRequest, Pulls
from ollamad.retry import OllamaFailure
from ollamad.scheduling import (INTERACTIVE, NOBODY, Admission, ProgressTracker, Refusal, Task,
                                Ticket, WorkerPool, principal)
from ollamad.serving.exchange import BatchExchange, Exchange
from ollamad.serving.registry import OpenRequests, cancellable_by
from ollamad.serving.router import Peer
from ollamad.metrics import Metrics
from ollamad_client import protocol
from ollamad_client.protocol import Error, ErrorCode

log = logging.getLogger(__name__)

#: Longest restart reason kept (it is stored and shown in status).
MAX_REASON = 200


class Introspection(Protocol):
    """What the daemon reports about itself, and its admin actions."""

    def status(self) -> dict[str, Any]: ...
    def health(self) -> dict[str, Any]: ...
    def metrics(self) -> dict[str, Any]: ...
    def gpu(self) -> dict[str, Any]: ...
    def restart_ollama(self, reason: str) -> dict[str, Any]: ...
    def is_admin(self, peer: Peer) -> bool: ...
    def unavailable_reason(self) -> str | None: ...


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
                 defaults: args.GenerationDefaults, limits: args.Limits,
                 requests: OpenRequests, admission: Admission, pulls: Pulls):
        self.pool = pool
        self.backend = backend
        self.metrics = metrics
        self.progress = progress
        self.introspection = introspection
        self.defaults = defaults
        self.limits = limits
        self.requests = requests
        self.admission = admission
        self.pulls = pulls
        self._bytes_lock = threading.Lock()
        #: Bytes of the requests admitted and not yet answered.
        self.queued_bytes = 0

    def dispatch(self, exchange: Exchange, peer: Peer) -> None:
        handler = _HANDLERS.get(exchange.op)
        if handler is None:  # an op the protocol knows but this daemon does not serve
            exchange.reject(Error.of(ErrorCode.UNKNOWN_OP, f"op {exchange.op!r} is not served"))
            return
        try:
            handler(self, exchange, peer)
        except OllamaFailure as failure:  # argument validation
            exchange.reject(failure.to_error())

    # -- helpers for handlers --------------------------------------------

    def admit(self, exchange: Exchange, peer: Peer) -> Ticket:
        """The request's ticket (tenant, lane, arguments with its profile, deadline)."""
        ticket = self.admission.ticket(exchange.request, peer.uid, peer.key)
        exchange.admitted(ticket.tenant, self.pool.lane(ticket.lane), ticket.timeout)
        return ticket

    def allowed(self, exchange: Exchange, body: Mapping[str, Any]) -> None:
        """The model policy's check of what would go to Ollama; names the exchange's model."""
        exchange.model = names.key(str(body.get("model") or ""))
        self.admission.check_model(body, exchange.request)

    def submit(self, exchange: Exchange, tasks: list[Task]) -> None:
        reason = self.introspection.unavailable_reason()
        if reason:
            exchange.reject(Error.of(ErrorCode.UNAVAILABLE, reason, retryable=False))
            return
        with self._bytes_lock:
            over = self.queued_bytes + exchange.size > self.limits.max_queued_bytes
        refusal = None if over else self.pool.submit(tasks)
        if over or refusal is not None:
            self.metrics.count_busy()
            exchange.reject(_busy(refusal, self.limits.max_queued_bytes, len(tasks)))
            return
        with self._bytes_lock:
            self.queued_bytes += exchange.size
        exchange.on_finish(lambda finished: self._finished(finished, tasks))

    def _finished(self, exchange: Exchange, tasks: list[Task]) -> None:
        self.pool.drop(tasks)
        with self._bytes_lock:
            self.queued_bytes -= exchange.size

    def task(self, exchange: Exchange, work: Callable[[CallContext], Mapping[str, Any]],
             *, generation: bool = False,
             finish: Callable[[Mapping[str, Any] | None, Error | None], None] | None = None) -> Task:
        """A pool task that runs ``work`` and finishes the exchange (or ``finish``)."""

        def done(result: Mapping[str, Any] | None, error: Error | None, ctx: CallContext,
                 started: float) -> None:
            if result is not None and generation:
                now = time.monotonic()
                result = {**result, "response_time": round(now - exchange.received_at, 6),
                          "queue_wait": round(started - exchange.received_at, 6)}
                if ctx.first_token_at is not None:
                    first = ctx.first_token_at - exchange.received_at
                    result["time_to_first_token"] = round(first, 6)
                    self.metrics.first_token(exchange.lane, first)
            if finish is not None:
                finish(result, error)
            elif error is None:
                exchange.resolve(result or {})
            else:
                exchange.attempts = ctx.attempts
                exchange.reject(error)

        def run() -> None:
            started = time.monotonic()   # the end of this task's queue wait
            waited = started - exchange.received_at
            self.metrics.waited(exchange.lane, exchange.tenant, waited)
            if exchange.queue_wait is None:
                exchange.queue_wait = waited
            ctx = CallContext(deadline=exchange.deadline, cancel=exchange.cancel,
                              waiting=lambda what: setattr(exchange, "waiting_for", what))
            if generation:
                ctx.on_progress = self.progress.touch
                if exchange.request.stream:
                    stall = self.backend.policy.attempt_timeout
                    ctx.on_chunk = lambda chunk: exchange.send_chunk(chunk, stall)
                self.progress.begin()
            try:
                done(work(ctx), None, ctx, started)
            except OllamaFailure as failure:
                done(None, failure.to_error(), ctx, started)
            except Exception as exc:
                log.exception("%s failed", exchange.op)
                done(None, Error.of(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"),
                     ctx, started)
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

        return Task(run=run, expire=expire, deadline=exchange.deadline, cancel=exchange.cancel,
                    lane=exchange.lane or INTERACTIVE, tenant=exchange.tenant or NOBODY)


def _busy(refusal: Refusal | None, max_queued_bytes: int, items: int) -> Error:
    if refusal is None:
        return Error.of(ErrorCode.BUSY, f"queued requests hold {max_queued_bytes} bytes "
                        "(max_queued_bytes); try again shortly", retry_after=1.0)
    if refusal.limit == "queue_size":
        what = f"the request queue is full ({refusal.queued} of {refusal.bound} items, queue_size)"
    elif not refusal.retryable:
        return Error.of(ErrorCode.BUSY, f"{items} items are more than this user may have "
                        f"queued (tenants.max_queued = {refusal.bound}): send at most "
                        f"{refusal.bound} at a time", retryable=False)
    else:
        what = (f"this user has {refusal.queued} items queued and may have at most "
                f"{refusal.bound} (tenants.max_queued)")
    return Error.of(ErrorCode.BUSY, f"{what}; try again in {refusal.retry_after:g} s",
                    retry_after=refusal.retry_after)


# -- model calls -----------------------------------------------------------

@handles("generate")
def _generate(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    call = args.generate_call(d.admit(exchange, peer).args, d.defaults)
    d.allowed(exchange, call.body)
    d.submit(exchange, [d.task(exchange, lambda ctx: d.backend.generate(ctx, call),
                               generation=True)])


@handles("chat")
def _chat(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    call = args.chat_call(d.admit(exchange, peer).args, d.defaults)
    d.allowed(exchange, call.body)
    d.submit(exchange, [d.task(exchange, lambda ctx: d.backend.generate(ctx, call),
                               generation=True)])


@handles("batch")
def _batch(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    assert isinstance(exchange, BatchExchange), "the I/O loop makes batch exchanges"
    request_args = d.admit(exchange, peer).args
    prompts = args.batch_prompts(request_args, d.limits.max_batch)
    calls = [args.generate_call(request_args, d.defaults, prompt=p) for p in prompts]
    d.allowed(exchange, calls[0].body)

    def item(index: int, call: args.GenerationCall) -> Task:
        def finish(result: Mapping[str, Any] | None, error: Error | None) -> None:
            exchange.item_done(index, {"ok": True, "result": result} if error is None
                               else {"ok": False, "error": error.to_json()})
        return d.task(exchange, lambda ctx: d.backend.generate(ctx, call),
                      generation=True, finish=finish)

    d.submit(exchange, [item(i, call) for i, call in enumerate(calls)])


@handles("embed")
def _embed(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    body = args.embed_body(d.admit(exchange, peer).args, d.defaults, d.limits.max_embed_inputs)
    d.allowed(exchange, body)
    d.submit(exchange, [d.task(exchange, lambda ctx: d.backend.embed(
        ctx, body, d.limits.max_reply_bytes))])


@handles("models")
def _models(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    d.admit(exchange, peer)

    def listing(ctx: CallContext) -> dict[str, Any]:
        return {"models": d.backend.get_json(ctx, "/api/tags").get("models") or [],
                "loaded": d.backend.get_json(ctx, "/api/ps").get("models") or []}
    d.submit(exchange, [d.task(exchange, listing)])


# -- answered on the I/O thread ---------------------------------------------

@handles("ping")
def _ping(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    # A batch bigger than this user may queue could never be admitted: the
    # client splits by the smaller of the two.
    advertised = d.limits.advertised()
    limits = d.admission.limits.of(principal(peer.uid, peer.key))
    advertised["max_batch"] = min(advertised["max_batch"], limits.max_queued)
    exchange.resolve({"protocol": protocol.VERSION, "version": __version__, "pid": os.getpid(),
                      **advertised})


@handles("cancel")
def _cancel(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    target = exchange.request.args.get("id")
    if not isinstance(target, str) or not 0 < len(target) <= protocol.MAX_ID_LENGTH:
        raise args.InvalidArguments(f"'id' must be the id of an earlier request "
                                    f"(1 to {protocol.MAX_ID_LENGTH} characters)")
    cancelled = [found.reject(Error.of(ErrorCode.CANCELLED, "cancelled by the client"))
                 for found in cancellable_by(d.requests.find(target), exchange.connection,
                                             peer.uid)]
    exchange.resolve({"cancelled": any(cancelled)})


def _snapshot_handler(op: str) -> Handler:
    def handler(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
        exchange.resolve(getattr(d.introspection, op)())
    return handler


for _op in ("status", "health", "metrics", "gpu"):
    handles(_op)(_snapshot_handler(_op))


def _admin_only(d: Dispatcher, exchange: Exchange, peer: Peer) -> bool:
    """Whether ``peer`` may call the exchange's admin op; answers ``forbidden`` if not."""
    if d.introspection.is_admin(peer):
        return True
    exchange.reject(Error.of(ErrorCode.FORBIDDEN, f"{exchange.op} is an admin op: only root, "
                             "the daemon's own user and members of admin_group may call it, "
                             "over an ipc socket"))
    return False


@handles("restart")
def _restart(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    if not _admin_only(d, exchange, peer):
        return
    reason = exchange.request.args.get("reason")
    reason = reason if isinstance(reason, str) and reason else f"admin request (pid {peer.pid})"
    # Answered here, never queued behind model calls: an operator needs it
    # most when the workers are stuck. It only posts the request to the
    # supervisor (which runs any restart command on its own thread), and
    # requests read after it wait for the new Ollama.
    exchange.resolve(d.introspection.restart_ollama(reason[:MAX_REASON]))


@handles("pull")
def _pull(d: Dispatcher, exchange: Exchange, peer: Peer) -> None:
    if not _admin_only(d, exchange, peer):
        return
    pull = args.pull_arguments(exchange.request.args)
    exchange.model = names.key(pull.model)
    reason = d.introspection.unavailable_reason()
    if reason:
        exchange.reject(Error.of(ErrorCode.UNAVAILABLE, reason, retryable=False))
        return
    # A pull may take hours: no overall deadline, but every wait within it is bounded by
    # the stall time-out (the request's `timeout`, else ollama.pull_stall_timeout).
    request = exchange.request
    stall = request.timeout if request.timeout_given else d.pulls.policy.stall_timeout
    exchange.unbounded()

    def progress(chunk: dict[str, Any]) -> None:
        if request.stream:
            exchange.send_chunk(chunk, stall)

    def done(result: Mapping[str, Any] | None, failure: OllamaFailure | None) -> None:
        if failure is not None or result is None:
            exchange.reject(failure.to_error() if failure else
                            Error.of(ErrorCode.INTERNAL, "the pull ended without a result"))
            return
        # New weights under a known name: what the daemon knew of the loaded model is stale.
        d.backend.loads.forget(pull.model)
        # An admin may pull a model clients may not use yet (to stage it before allowing it):
        # the result says whether allowed_models lets them.
        allowed = d.admission.models.refusal(exchange.model or "", loaded=True) is None
        exchange.resolve({**result, "model": exchange.model, "allowed": allowed})

    refusal = d.pulls.start(PullRequest(pull.model, pull.insecure, stall, exchange.cancel,
                                        progress, done))
    if refusal is not None:
        d.metrics.count_busy()
        exchange.reject(refusal)
