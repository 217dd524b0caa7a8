"""Model loads: the daemon's own operation, never cut by a request's time-out.

Ollama aborts a load whose client went away ("client connection closed
before llama-server finished loading, aborting load") and kills the
half-loaded runner. If a request's own connection did the loading, a request
that gives up (its deadline, a cancel, a per-attempt time-out) would throw
the load away, and the next request would start it again from zero: a
model that loads for longer than a request may wait would never load.

So before a generation, :meth:`Loads.ensure` makes sure its model is
loaded, on a connection of its own:

* a model known to be loaded (with these runner options, by this Ollama,
  and not past its ``keep_alive``) costs a dictionary look-up;
* otherwise one :class:`Load` per model and runner options runs in a thread
  of its own: an empty-prompt generate, which loads the model (at once when
  it is loaded already) and answers once, bounded by ``ollama.load_timeout``
  only. Requests for that model wait for it within
  their own deadlines; one that gives up leaves it running, and a later
  request finds the model loaded.

What is known is forgotten when Ollama is restarted (the endpoint's run
changes). A model evicted behind the daemon's back (another model needed
the memory) is loaded by the next generation's own request, as Ollama
does. Embedding requests load their (small) models themselves: Ollama has
no empty-input embed that loads.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import requests

from ollamad import goduration
from ollamad.ollama import names
from ollamad.ollama.runner import OPTIONS as RUNNER_OPTIONS
from ollamad.retry import OllamaFailure, classify_status
from ollamad_client.protocol import ErrorCode

log = logging.getLogger("ollamad.loads")

CONNECT_TIMEOUT = 2.0
#: How often a request waiting for a load looks at its own cancellation and deadline.
WAIT_SLICE = 0.1


class Waiter(Protocol):
    """The request that waits for a load (:class:`ollamad.backend.CallContext`)."""

    attempts: int

    def remaining(self) -> float: ...
    def check(self, waiting_for: str) -> None: ...
    def waiting(self, what: str | None) -> None: ...


def keep_alive_seconds(value: Any) -> float:
    """How long Ollama keeps a model after a request with this ``keep_alive`` (inf: forever)."""
    ns = goduration.keep_alive_ns(value)
    return math.inf if ns == goduration.FOREVER_NS else ns / goduration.NS_PER_S


def _options_key(options: Mapping[str, Any]) -> tuple:
    return tuple(sorted(options.items()))


@dataclass
class Load:
    """One load under way (or just finished) of a model with given runner options."""

    model: str
    started: float
    done: threading.Event
    failure: OllamaFailure | None = None
    #: Ollama's load time, 0 when the model was loaded already.
    load_ns: int = 0


class Loads:
    """Which models are loaded, and the loads under way. Thread-safe."""

    def __init__(self, url: Callable[[], str | None], run: Callable[[], int],
                 load_timeout: float, clock: Callable[[], float] = time.monotonic):
        self._url = url
        self._run = run
        self.load_timeout = load_timeout
        self._clock = clock
        self._lock = threading.Lock()
        #: (model, runner options) -> (Ollama run, monotonic time its keep_alive ends).
        self._loaded: dict[tuple[str, tuple], tuple[int, float]] = {}
        self._loading: dict[tuple[str, tuple], Load] = {}

    # -- what the request path calls ------------------------------------------------
    def ensure(self, body: Mapping[str, Any], ctx: "Waiter") -> None:
        """Return once ``body['model']`` is loaded; raise the load's failure, or ``ctx``'s.

        ``ctx.check(waiting_for)`` raises when the request was cancelled or its
        deadline passed; the load goes on without it.
        """
        model, options = body["model"], body.get("options") or {}
        key = (names.key(model), _options_key(_runner_part(options)))
        run = self._run()   # not under our lock: it takes the supervisor's
        with self._lock:
            known = self._loaded.get(key)
            if known and known[0] == run and known[1] > self._clock():
                return
            load = self._loading.get(key)
            if load is None:
                load = self._loading[key] = Load(model, self._clock(), threading.Event())
                threading.Thread(target=self._load, args=(key, load, body), daemon=True,
                                 name=f"ollamad-load-{key[0]}").start()
        waiting_for = f"Ollama to load {model} (the load goes on without this request)"
        ctx.waiting(waiting_for)
        try:
            while not load.done.wait(min(WAIT_SLICE, max(ctx.remaining(), 0.0))):
                ctx.check(waiting_for)
        finally:
            ctx.waiting(None)
        if load.failure is not None:
            ctx.attempts += 1   # the load was this attempt's call to Ollama
            raise load.failure

    def used(self, body: Mapping[str, Any]) -> None:
        """A generation for ``body['model']`` ended: Ollama keeps it for its keep_alive now."""
        key = (names.key(body["model"]), _options_key(_runner_part(body.get("options") or {})))
        until, run = self._kept_until(body), self._run()
        with self._lock:
            self._loaded[key] = (run, until)

    def forget(self, model: str) -> None:
        """``model`` changed on disk (a pull): it is no longer known loaded, whatever options."""
        with self._lock:
            for key in [key for key in self._loaded if key[0] == names.key(model)]:
                del self._loaded[key]

    def loading(self, model: str) -> bool:
        """A load of ``model`` is under way (the probe must not take its slowness for a hang)."""
        with self._lock:
            return any(key[0] == names.key(model) for key in self._loading)

    def snapshot(self) -> list[dict[str, Any]]:
        now = self._clock()
        with self._lock:
            return [{"model": load.model, "for_s": round(now - load.started, 3)}
                    for load in self._loading.values()]

    def _kept_until(self, body: Mapping[str, Any]) -> float:
        """When Ollama unloads the model after a request with ``body``'s keep_alive ends now
        (args validated it; Ollama's default when there is none)."""
        return self._clock() + keep_alive_seconds(body.get("keep_alive", "5m"))

    # -- the load thread --------------------------------------------------------------
    def _load(self, key: tuple[str, tuple], load: Load, body: Mapping[str, Any]) -> None:
        run = self._run()
        try:
            self._load_now(load, body)
        except OllamaFailure as failure:
            load.failure = failure
        except Exception as exc:  # a bug here must still release the waiting requests
            log.exception("loading %s failed", load.model)
            load.failure = OllamaFailure(ErrorCode.INTERNAL, f"loading {load.model}: {exc!r}",
                                         retryable=False)
        with self._lock:
            del self._loading[key]
            if load.failure is None:
                self._loaded[key] = (run, self._kept_until(body))
        load.done.set()
        if load.failure is None and load.load_ns:
            log.info("loaded %s in %.1f s", load.model, load.load_ns / 1e9)
        elif load.failure is not None:
            log.warning("loading %s failed: %s", load.model, load.failure.message)

    def _load_now(self, load: Load, body: Mapping[str, Any]) -> None:
        url = self._url()
        if url is None:
            raise OllamaFailure(ErrorCode.UNAVAILABLE, "Ollama's address is not known yet",
                                retryable=True)
        with requests.Session() as session:
            session.trust_env = False   # a proxy meant for the internet is not for Ollama
            try:
                # A model already loaded with these options answers at once.
                request = {"model": body["model"], "prompt": "", "stream": False,
                           "options": _runner_part(body.get("options") or {})}
                if "keep_alive" in body:
                    request["keep_alive"] = body["keep_alive"]
                response = session.post(url + "/api/generate", json=request,
                                        timeout=(CONNECT_TIMEOUT, self.load_timeout))
            except requests.Timeout:
                raise OllamaFailure(ErrorCode.TIMEOUT, f"loading {load.model} took longer than "
                                    f"ollama.load_timeout ({self.load_timeout:g} s)",
                                    retryable=False) from None
            except requests.RequestException as exc:
                raise OllamaFailure(ErrorCode.UNAVAILABLE, f"cannot reach Ollama to load "
                                    f"{load.model}: {exc}", retryable=True,
                                    connection=True) from None
            with response:
                if response.status_code != 200:
                    raise classify_status(response.status_code, _error(response))
                try:
                    load.load_ns = int(response.json().get("load_duration") or 0)
                except (ValueError, AttributeError, TypeError):
                    pass


def _runner_part(options: Mapping[str, Any]) -> dict[str, Any]:
    """The runner options among a request's options (what a load is made of)."""
    return {name: value for name, value in options.items() if name in RUNNER_OPTIONS}


def _error(response: requests.Response) -> str:
    try:
        message = json.loads(response.content[:64 * 1024]).get("error")
    except (ValueError, AttributeError):
        message = None
    return message or f"HTTP {response.status_code} from Ollama while loading"
