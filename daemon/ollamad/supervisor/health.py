"""Judging a RUNNING Ollama from its probes: when to probe, and when it needs a restart.

A full probe round runs every ``probe_interval`` (and once as soon as it is
RUNNING, and again when the warm-up load ends): ``GET /``, ``GET /api/ps``
and the inference probe. A worker's connection failure brings the next
``GET /`` forward (never the inference probe), but ``GET /`` probes stay at
least ``min(probe_interval / 3, 1 s)`` apart, so that a burst of reports
cannot fail three probes within milliseconds.

Verdicts:

* not answering: ``GET /`` failed :data:`LIVENESS_FAILURES` times in a row;
* hung: the inference probe timed out and nothing is progressing (the rule
  is in :mod:`.probes`, :func:`~.probes.is_hung`).

The inference probe is skipped while a load of its model runs, the warm-up
or one for a request (a model load is not a hang; it is bounded by
``load_timeout``), and, without ``warm_model``, while the model is not
loaded and nothing is in flight (the probe would load the model that
``keep_alive`` just unloaded). It sends the configured runner options, so
it never makes Ollama reload the model. An *error answer* to it (a missing
model, a bad ``keep_alive``) is not a hang, but it leaves hang detection
blind: it is kept in the report, and ``health`` says degraded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, TypeVar

from ollamad.config import Config, OllamaSettings
from ollamad.ollama import names
from ollamad.ollama.runner import RunnerPolicy
from ollamad.supervisor import probes
from ollamad.supervisor.probes import Job, ProbeResult, is_hung

T = TypeVar("T")
#: How a probe is run: (call, time-out, result if it runs out of time) -> result.
Runner = Callable[[Callable[[], T], float, T], T]

log = logging.getLogger("ollamad.supervisor")

#: Consecutive failed ``GET /`` probes that mean "not answering".
LIVENESS_FAILURES = 3
#: The longest gap between ``GET /`` probes that workers' failure reports bring forward.
FORCED_PROBE_GAP = 1.0


def probe_record(live: ProbeResult, inference: ProbeResult | None = None) -> dict:
    """The snapshot's ``last_probe`` for a ``GET /`` and, in a full round, the inference probe."""
    record = {"ok": live.ok, "at": live.at, "latency_ms": round(live.latency_ms, 1),
              "error": live.error}
    if inference is not None:
        record["inference_ms"] = round(inference.latency_ms, 1)
        if not inference.ok:
            record.update(ok=False, error=f"inference: {inference.error}")
            if not inference.timed_out:   # Ollama answered, with an error
                record["inference_error"] = inference.error
    return record


@dataclass(frozen=True)
class Verdict:
    """What one probe round found."""

    #: Why Ollama must be restarted; None when it is fine.
    reason: str | None = None
    #: The reason is a hang (in external mode without a restart command, only reported).
    hung: bool = False
    #: The snapshot's new ``last_probe``; None leaves the previous one.
    record: dict | None = None
    #: The loaded models (``/api/ps``); None when not asked or it failed.
    models: list[dict] | None = None


def warm_up(url: str, config: Config) -> None:
    """Load ``config.model`` (an empty-prompt generate); failures are logged, not fatal."""
    timeout = config.ollama.load_timeout
    loaded = probes.load_model(url, config.model, config.ollama.keep_alive,
                               RunnerPolicy.from_config(config).configured(config.model), timeout)
    if loaded.ok:
        log.info("warm-up: %s loaded in %.0f ms", config.model, loaded.latency_ms)
    else:
        log.warning("warm-up: could not load %s: %s", config.model, loaded.error)


class Health:
    """The probe schedule and verdicts for one run of Ollama (reset each time it is RUNNING)."""

    def __init__(self, progress: Callable[[], tuple[int, float | None]],
                 loading: Callable[[str], bool] = lambda model: False):
        self._progress = progress
        self._loading = loading
        self.reset()

    def reset(self, warm_up: Job | None = None) -> None:
        """Ollama is RUNNING (again): the first round is due now."""
        self.liveness_failures = 0
        self.last_liveness = self.last_round = -math.inf
        #: The warm-up load while it runs in the background: no inference probe meanwhile.
        self.warm_up = warm_up

    def due(self, settings: OllamaSettings, probe_now: bool) -> float:
        """When the next probe is due (a monotonic time)."""
        if self.warm_up is not None and self.warm_up.done.is_set():
            self.warm_up = None            # the model is loaded (or failed to): look now
            self.last_round = -math.inf
        due = self.last_round + settings.probe_interval
        if probe_now:
            gap = min(settings.probe_interval / LIVENESS_FAILURES, FORCED_PROBE_GAP)
            due = min(due, self.last_liveness + gap)
        return due

    def begin(self, now: float, settings: OllamaSettings) -> bool:
        """A probe starts now: True for a full round, False for a brought-forward ``GET /``."""
        self.last_liveness = now
        full = now >= self.last_round + settings.probe_interval
        if full:
            self.last_round = now
        return full

    def probe(self, url: str, config: Config, full: bool, run: Runner) -> Verdict:
        """``GET /`` and, in a full round, ``/api/ps`` and the inference probe."""
        settings = config.ollama
        timeout = settings.probe_timeout
        live = run(lambda: probes.alive(url, timeout), timeout, ProbeResult.timeout(timeout))
        reason = self.judge_liveness(live)
        if not live.ok:
            return Verdict(reason, record=probe_record(live))
        if not full:
            return Verdict()
        listed = run(lambda: probes.loaded_models(url, timeout), timeout,
                     ProbeResult.timeout(timeout))
        if not listed.ok:
            log.warning("/api/ps: %s", listed.error)
        models = listed.data if listed.ok else None
        inference = None
        if self.wants_inference(config, models or []):
            limit = settings.inference_probe_timeout
            options = RunnerPolicy.from_config(config).configured(config.model)
            inference = run(lambda: probes.infer(url, config.model, settings.keep_alive, options,
                                                 limit),
                            limit, ProbeResult.timeout(limit))
        hang = self.judge_inference(inference, settings.hang_after) if inference else None
        return Verdict(hang, hung=hang is not None, record=probe_record(live, inference),
                       models=models)

    def judge_liveness(self, live: ProbeResult) -> str | None:
        """Count ``GET /`` failures; the reason to restart once there are too many in a row."""
        if live.ok:
            self.liveness_failures = 0
            return None
        self.liveness_failures += 1
        if self.liveness_failures >= LIVENESS_FAILURES:
            return f"not answering GET / ({self.liveness_failures} probes): {live.error}"
        return None

    def wants_inference(self, config: Config, models: list[dict]) -> bool:
        if self.warm_up is not None or self._loading(config.model):
            return False
        # /api/ps names carry a tag (llama3:latest) where the config may not (llama3).
        loaded = any(names.key(m["name"]) == names.key(config.model) for m in models)
        return config.ollama.warm_model or loaded or self.progress()[0] > 0

    def judge_inference(self, result: ProbeResult, hang_after: float) -> str | None:
        """The hang rule applied to an inference probe: why Ollama is hung, or None."""
        if result.ok or not result.timed_out:
            if not result.ok:   # Ollama answered with an error: not a hang
                log.warning("inference probe: %s", result.error)
            return None
        in_flight, idle = self.progress()
        if not is_hung(result, in_flight, idle, hang_after):
            log.info("inference probe %s, but generations are progressing (%d in flight, last "
                     "progress %.1f s ago): not hung", result.error, in_flight, idle or 0.0)
            return None
        if in_flight == 0:
            return f"hung: inference probe {result.error} with no generation in flight"
        since = "none yet" if idle is None else f"{idle:.1f} s ago"
        return (f"hung: inference probe {result.error}; {in_flight} generation(s) in flight, "
                f"last progress {since}")

    def progress(self) -> tuple[int, float | None]:
        try:
            return self._progress()
        except Exception:
            # Unknown progress must not kill generations that may be running fine.
            log.exception("progress() failed; assuming generations are progressing")
            return 1, 0.0
