"""HTTP probes of Ollama, and the rule that declares it hung.

Probes:

* liveness: ``GET /`` answers 200 (``Ollama is running``). This is also the
  readiness test after a start: Ollama binds its port before it discovers
  GPUs and only answers HTTP afterwards, so neither the "Listening on" log
  line nor a TCP connect means ready.
* inference: a one-token generate (``{"model": M, "prompt": "ping",
  "stream": false, "options": {"num_predict": 1}}``) with
  ``inference_probe_timeout``, because Ollama can answer ``/`` while
  generation is wedged (ollama/ollama #1863, #2339, #3912).
* ``GET /api/ps``: the loaded models and whether they sit on the GPU.
* warm-up: an empty-prompt generate, which loads the model and answers once.

Every probe has a hard time-out and never raises: it returns a
:class:`ProbeResult`. Probes ignore proxy variables (``trust_env=False``): an
``http_proxy`` meant for the internet must not sit between us and a local
Ollama.

The hang rule
-------------
Ollama is **hung** when the inference probe *timed out* (an error answer such
as 404 model-not-found or a 500 from a crashed runner is Ollama talking, not
hanging) **and** either no generation is in flight, or no in-flight
generation has received a chunk for ``hang_after`` seconds (``progress()``
reports both). A long generation that keeps producing chunks keeps Ollama
alive however long it runs and however slow the probe is, since a probe
queued behind busy slots times out too. See :func:`is_hung`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import requests

log = logging.getLogger("ollamad.supervisor")

PROBE_PROMPT = "ping"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: float
    error: str | None = None
    #: The probe got no answer in time (as opposed to a refused connection or an error answer).
    timed_out: bool = False
    #: The decoded JSON answer, when there is one.
    data: Any = None
    at: float = field(default_factory=time.time)

    @classmethod
    def timeout(cls, seconds: float) -> "ProbeResult":
        return cls(False, seconds * 1000.0, f"timed out after {seconds:g} s", timed_out=True)


def is_hung(probe: ProbeResult, in_flight: int, idle: float | None, hang_after: float) -> bool:
    """The hang rule (module docstring): the probe timed out and nothing is progressing."""
    if probe.ok or not probe.timed_out:
        return False
    return in_flight == 0 or idle is None or idle >= hang_after


_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")


def _describe(exc: requests.RequestException) -> str:
    """The cause, which requests buries ("Max retries exceeded ... [Errno 111] ...")."""
    found = _ERRNO.search(str(exc))
    return found.group(0).strip() if found else (str(exc)[:200] or type(exc).__name__)


def _error_text(response: requests.Response) -> str:
    try:
        message = response.json().get("error")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {response.status_code}: {message or response.text[:200]}"


def _call(method: str, url: str, timeout: float, body: dict | None = None, *,
          json_answer: bool = True) -> ProbeResult:
    started = time.monotonic()
    try:
        with requests.Session() as session:
            session.trust_env = False
            response = session.request(method, url, json=body, timeout=(timeout, timeout))
    except requests.Timeout:
        return ProbeResult.timeout(timeout)
    except requests.RequestException as exc:
        return ProbeResult(False, (time.monotonic() - started) * 1000.0, _describe(exc))
    latency = (time.monotonic() - started) * 1000.0
    if response.status_code != 200:
        return ProbeResult(False, latency, _error_text(response))
    if not json_answer:
        return ProbeResult(True, latency, data=response.text)
    try:
        data = response.json()
    except ValueError:
        return ProbeResult(False, latency, f"not JSON: {response.text[:200]!r}")
    return ProbeResult(True, latency, data=data)


def alive(base_url: str, timeout: float) -> ProbeResult:
    return _call("GET", base_url + "/", timeout, json_answer=False)


def version(base_url: str, timeout: float) -> str | None:
    """Ollama's version (``GET /api/version``), or None when it does not say."""
    result = _call("GET", base_url + "/api/version", timeout)
    data = result.data if result.ok and isinstance(result.data, dict) else {}
    return data.get("version") if isinstance(data.get("version"), str) else None


def infer(base_url: str, model: str, keep_alive: str, runner_options: dict[str, Any],
          timeout: float) -> ProbeResult:
    # keep_alive is passed so that the probe does not shorten the model's
    # residence to Ollama's default of 5 minutes, and the configured runner
    # options (ollamad.ollama.runner) so that it never makes Ollama reload.
    return _call("POST", base_url + "/api/generate", timeout,
                 {"model": model, "prompt": PROBE_PROMPT, "stream": False,
                  "keep_alive": keep_alive, "options": {**runner_options, "num_predict": 1}})


def load_model(base_url: str, model: str, keep_alive: str, runner_options: dict[str, Any],
               timeout: float) -> ProbeResult:
    """Warm-up: an empty prompt makes Ollama load the model and answer ``done_reason: "load"``."""
    return _call("POST", base_url + "/api/generate", timeout,
                 {"model": model, "prompt": "", "keep_alive": keep_alive,
                  "options": runner_options})


def loaded_models(base_url: str, timeout: float) -> ProbeResult:
    """``GET /api/ps``; ``data`` becomes the snapshot's list of models."""
    result = _call("GET", base_url + "/api/ps", timeout)
    if not result.ok:
        return result
    try:
        models = [_loaded_model(m) for m in (result.data or {}).get("models") or []]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return ProbeResult(False, result.latency_ms, f"/api/ps: unexpected answer ({exc})")
    return ProbeResult(True, result.latency_ms, data=models)


def _loaded_model(listed: dict) -> dict:
    size, size_vram = int(listed.get("size", 0)), int(listed.get("size_vram", 0))
    return {"name": listed["name"], "size": size, "size_vram": size_vram,
            "on_gpu": size_vram > 0,
            # 0 < gpu_share < 1: partly offloaded to the CPU, and slower for it.
            "gpu_share": round(size_vram / size, 3) if size > 0 else None,
            "context_length": listed.get("context_length"),
            "expires_at": listed.get("expires_at")}


class Job:
    """A call running in a helper thread, so that whoever waits for it can give up on time."""

    def __init__(self, call: Callable[[], Any], on_done: Callable[[], None]):
        self.done = threading.Event()
        self.returned = False   # False: still running, or it raised
        self.result: Any = None
        self._call, self._on_done = call, on_done
        threading.Thread(target=self._run, name="ollamad-probe", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._call()
            self.returned = True
        except Exception:
            log.exception("probe failed unexpectedly")
        finally:
            self.done.set()
            self._on_done()
