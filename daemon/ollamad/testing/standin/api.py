"""Routing and the simple endpoints of Ollama's API; inference lives in generation.py.

Routing behaves like gin as Ollama configures it: unknown path 404 `404 page
not found`, known path with another method 405 `405 method not allowed`
(both `text/plain`), a trailing slash redirects.
"""

from __future__ import annotations

import json

from ollamad.testing.standin import apitypes, gojson
from ollamad.testing.standin.apitypes import ApiError, not_found
from ollamad.testing.standin.catalog import Catalog, canonical_name
from ollamad.testing.standin.config import VERSION, Settings
from ollamad.testing.standin.control import Control
from ollamad.testing.standin.faults import FaultBook
from ollamad.testing.standin.generation import Inference
from ollamad.testing.standin.httpserver import NO_CONTENT_TYPE, TEXT, Exchange
from ollamad.testing.standin.openai import OpenAI
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
        self.faults = FaultBook(list(settings.faults))
        self.stats = Stats()
        self.pool = RunnerPool(settings)
        scheduler = Scheduler(self.pool, self.faults, settings.max_queue)
        inference = Inference(settings, self.catalog, self.pool, scheduler, self.faults,
                              self.stats)
        self._control = Control(self.faults, self.stats, self.pool)
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
        request = apitypes.decode(exchange.body, apitypes.PULL)
        name = request.get("model") or request.get("name", "")
        if canonical_name(name) is None:
            raise ApiError(400, "invalid model name")
        model = self.catalog.pullable(name)
        statuses: list[dict] = [{"status": "pulling manifest"}]
        if model is not None:
            for digest, size in model.layers():
                statuses.append({"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}",
                                 "total": size, "completed": size})
            statuses += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                         {"status": "success"}]
            self.catalog.install(model)
        if not request.get("stream", True):
            if model is None:
                raise ApiError(500, PULL_MISSING)
            return exchange.send_json(200, statuses[-1])
        if model is None:
            statuses.append({"error": PULL_MISSING})
        stream = exchange.stream()
        for index, status in enumerate(statuses, start=1):
            stream.write(status, last=index == len(statuses))
