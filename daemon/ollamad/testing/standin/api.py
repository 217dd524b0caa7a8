"""Routing and the simple endpoints of Ollama's API; inference lives in generation.py.

Routing behaves like gin as Ollama configures it: unknown path 404 `404 page
not found`, known path with another method 405 `405 method not allowed`
(both `text/plain`), a trailing slash redirects.
"""

from __future__ import annotations

import json

from ollamad.ollama import names
from ollamad.testing.standin import apitypes, gojson
from ollamad.testing.standin.apitypes import ApiError, not_found
from ollamad.testing.standin.catalog import Catalog, canonical_name
from ollamad.testing.standin.config import VERSION, Settings
from ollamad.testing.standin.control import Control
from ollamad.testing.standin.faults import FaultBook
from ollamad.testing.standin.generation import Inference
from ollamad.testing.standin.httpserver import NO_CONTENT_TYPE, TEXT, Exchange
from ollamad.testing.standin.openai import OpenAI
from ollamad.testing.standin.registrypull import PullFailed, RegistryPuller
from ollamad.testing.standin.runners import RunnerPool
from ollamad.testing.standin.scheduler import Scheduler
from ollamad.testing.standin.stats import Stats

_GENERATIONS = {"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions"}
_RECORDED = _GENERATIONS | {"/api/embed", "/v1/embeddings"}
_V1_MODEL = "/v1/models/"
PULL_MISSING = "pull model manifest: file does not exist"


def _as_received(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


class App:
    """The stand-in's HTTP application: `dispatch(exchange)` answers one request."""

    def __init__(self, settings: Settings):
        self.catalog = Catalog(settings.models)
        self.registry = RegistryPuller(self.catalog)
        self.faults = FaultBook(list(settings.faults))
        self.stats = Stats()
        self.pool = RunnerPool(settings)
        scheduler = Scheduler(self.pool, self.faults, settings.max_queue)
        inference = Inference(settings, self.catalog, self.pool, scheduler, self.faults,
                              self.stats)
        self._control = Control(self.faults, self.stats, self.pool, self.registry.progress)
        self._openai = OpenAI(self.catalog, inference.chat, inference.generate, inference.embed)
        self._routes = {
            "/": {"GET": self._root, "HEAD": self._root},
            "/api/version": {"GET": self._version, "HEAD": self._version},
            "/api/tags": {"GET": self._tags, "HEAD": self._tags},
            "/api/ps": {"GET": self._ps},
            "/api/show": {"POST": self._show},
            "/api/pull": {"POST": self._pull},
            "/api/copy": {"POST": self._copy},
            "/api/delete": {"DELETE": self._delete},
            "/api/generate": {"POST": inference.generate},
            "/api/chat": {"POST": inference.chat},
            "/api/embed": {"POST": inference.embed},
            "/api/embeddings": {"POST": inference.embeddings},
            "/v1/chat/completions": {"POST": self._openai.chat_completions},
            "/v1/completions": {"POST": self._openai.completions},
            "/v1/embeddings": {"POST": self._openai.embeddings},
            "/v1/models": {"GET": self._openai.models},
        }

    def dispatch(self, exchange: Exchange):
        if exchange.path.startswith("/_standin/"):
            return self._control.dispatch(exchange)
        generation = exchange.method == "POST" and exchange.path in _GENERATIONS
        self.stats.begin(f"{exchange.method} {exchange.path}", generation)
        exchange.on_complete(lambda: self.stats.end(generation))
        try:
            if exchange.method == "POST" and exchange.path in _RECORDED:
                self.stats.record_body(_as_received(exchange.body))
            epoch = self.faults.epoch
            if self.faults.take("unresponsive"):
                exchange.peer.wait_for(lambda: self.faults.epoch != epoch)
            self._route(exchange)
        except ApiError as error:
            if not exchange.answered:
                exchange.send_error(error.status, error.message)
        finally:
            exchange.complete()

    def _route(self, exchange: Exchange):
        if exchange.method == "GET" and exchange.path.startswith(_V1_MODEL):
            name = exchange.path[len(_V1_MODEL):]
            if name and "/" not in name:  # gin's /v1/models/:model
                return self._openai.model(exchange, name)
        methods = self._routes.get(exchange.path)
        if methods is None:
            bare = exchange.path.rstrip("/")
            if bare != exchange.path and bare in self._routes:
                status = 301 if exchange.method == "GET" else 307
                return exchange.send(status, b"", TEXT, f"Location: {bare}\r\n")
            return exchange.send(404, b"404 page not found", "text/plain")
        handler = methods.get(exchange.method)
        if handler is None:
            allow = ", ".join(methods)
            return exchange.send(405, b"405 method not allowed", "text/plain",
                                 f"Allow: {allow}\r\n")
        handler(exchange)

    # --- simple endpoints ---------------------------------------------------

    def _root(self, exchange: Exchange):
        exchange.send(200, b"Ollama is running", TEXT)

    def _version(self, exchange: Exchange):
        exchange.send_json(200, {"version": VERSION})

    def _tags(self, exchange: Exchange):
        exchange.send_json(200, {"models": [m.tags_entry() for m in self.catalog.all()]})

    def _ps(self, exchange: Exchange):
        exchange.send_json(200, {"models": self.pool.ps_entries()})

    def _show(self, exchange: Exchange):
        request = apitypes.decode(exchange.body, apitypes.SHOW)
        name = request.get("name") or request.get("model", "")
        if not name:
            raise ApiError(400, apitypes.MODEL_REQUIRED)
        model = self.catalog.find(name)
        if model is None:
            raise not_found(name)
        exchange.send_json(200, model.show())

    def _copy(self, exchange: Exchange):
        request = apitypes.decode(exchange.body, apitypes.COPY)
        source, destination = request.get("source", ""), request.get("destination", "")
        for role, name in (("source", source), ("destination", destination)):
            if canonical_name(name) is None:
                raise ApiError(400, f"{role} {gojson.dumps(name).decode()} is invalid")
        if not self.catalog.copy(source, destination):
            raise ApiError(404, f"model {gojson.dumps(source).decode()} not found")
        exchange.send(200, b"", NO_CONTENT_TYPE)

    def _delete(self, exchange: Exchange):
        """Removes the model from disk; a loaded runner of it keeps running, as in Ollama."""
        request = apitypes.decode(exchange.body, apitypes.DELETE)
        name = request.get("model") or request.get("name", "")
        if canonical_name(name) is None:
            raise ApiError(400, f"name {gojson.dumps(name).decode()} is invalid")
        if not self.catalog.delete(name):
            raise not_found(name)
        exchange.send(200, b"", NO_CONTENT_TYPE)

    def _pull(self, exchange: Exchange):
        """A well-known name from the default registry installs from the catalog at once; a
        name with a registry host of its own is fetched from it (registrypull)."""
        request = apitypes.decode(exchange.body, apitypes.PULL)
        name = names.parse(request.get("model") or request.get("name", ""))
        if name is None:
            raise ApiError(400, "invalid model name")
        answer = _PullAnswer(exchange, streamed=request.get("stream", True))
        if not name.from_default_registry:
            try:
                self.registry.pull(name, bool(request.get("insecure")), exchange.peer,
                                   answer.send)
            except PullFailed as failure:
                return answer.fail(str(failure))
            return answer.finish()
        answer.send({"status": "pulling manifest"})
        model = self.catalog.pullable(name.shortest)
        if model is None:
            return answer.fail(PULL_MISSING)
        for digest, size in model.layers():
            answer.send({"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}",
                         "total": size, "completed": size})
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            answer.send({"status": status})
        self.catalog.install(model)
        answer.finish()


class _PullAnswer:
    """A pull's statuses: NDJSON lines as they come, or (``stream: false``) only the last;
    an error ends the stream with an error line, or is the 500 answer (routes.go
    streamResponse, waitForStream)."""

    def __init__(self, exchange: Exchange, streamed: bool):
        self._exchange = exchange
        self._stream = exchange.stream() if streamed else None
        self._latest: dict = {}

    def send(self, status: dict):
        if self._stream is not None:
            self._stream.write(status)
        self._latest = status

    def fail(self, message: str):
        if self._stream is not None and self._stream.started:
            self._stream.write({"error": message}, last=True)
        else:
            self._exchange.send_error(500, message)

    def finish(self):
        if self._stream is not None:
            self._stream.send(b"", last=True)
        else:
            self._exchange.send_json(200, self._latest)
