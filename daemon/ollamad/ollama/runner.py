"""Runner options: the shape of a loaded model, which the daemon sets and clients do not.

Ollama starts a model's runner with the runner options of the request that
loaded it (``num_ctx``, ``num_batch``, ``num_gpu``, ``main_gpu``,
``use_mmap``, ``num_thread``, ``draft_num_predict``; ``api/types.go``) and
*reloads* the model whenever a later request's differ (``server/sched.go``).
On a shared GPU that lets any client evict the others' model, force a
reload on every request, or push a model onto the CPU (``num_gpu: 0``). So
the daemon owns them: every request it sends for a model (the clients', the
probe's, a load's) carries the same runner options, read from the config:

* ``ollama.context_length`` as ``num_ctx`` for every model (0: Ollama's own
  automatic size, by VRAM);
* ``[runner_options."MODEL"]`` tables, per model, for the rest (and to
  override ``num_ctx``).

A client's runner option that equals the configured value passes; one that
differs is refused (``bad_request``, naming the option and the configured
value), unless ``ollama.client_runner_options`` lets clients choose them (a
single-tenant host, where reloads hurt nobody else). Sampling options
(temperature, top_p, seed, stop, ...) are always the client's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ollamad.ollama import names
from ollamad.retry import OllamaFailure
from ollamad_client.protocol import ErrorCode

#: Each runner option: (type, lowest, highest) as the config accepts it.
OPTIONS: dict[str, tuple[type, int, int]] = {
    "num_ctx": (int, 1, 1 << 22),
    "num_batch": (int, 1, 1 << 20),
    "num_gpu": (int, -1, 1 << 16),     # layers on the GPU; -1: as many as fit
    "main_gpu": (int, 0, 1024),
    "use_mmap": (bool, 0, 1),
    "num_thread": (int, 0, 1 << 12),
    "draft_num_predict": (int, 0, 1 << 16),
}


def check_option(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid runner option ``name``, or None when it is."""
    if name not in OPTIONS:
        return f"unknown runner option (one of {', '.join(OPTIONS)})"
    kind, low, high = OPTIONS[name]
    if kind is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"must be an integer from {low} to {high}"
    return None


@dataclass(frozen=True)
class RunnerPolicy:
    """The configured runner options, and what clients may ask for."""

    context_length: int = 0
    #: Canonical model name -> its configured runner options.
    per_model: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    clients_may_set: bool = False

    @classmethod
    def from_config(cls, config) -> "RunnerPolicy":
        return cls(context_length=config.ollama.context_length,
                   per_model=config.runner_options,
                   clients_may_set=config.ollama.client_runner_options)

    def configured(self, model: str) -> dict[str, Any]:
        """The runner options every request for ``model`` carries."""
        options: dict[str, Any] = {"num_ctx": self.context_length} if self.context_length else {}
        options.update(self.per_model.get(names.key(model), {}))
        return options

    def _source(self, model: str, option: str) -> str:
        if option in self.per_model.get(names.key(model), {}):
            return f'[runner_options."{names.key(model)}"]'
        return "ollama.context_length"

    def apply(self, model: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options to send for a client's ``options``: the configured runner options added,
        a differing client runner option refused (``bad_request``) unless clients may set them."""
        configured = self.configured(model)
        for name in OPTIONS:
            if name not in options or options[name] is None:
                continue
            asked = options[name]
            if self.clients_may_set or configured.get(name, _UNSET) == asked:
                continue
            if name in configured:
                runs = (f"{names.key(model)} runs with {name}={_shown(configured[name])} "
                        f"(set by {self._source(model, name)})")
            else:
                runs = f"{names.key(model)} runs with Ollama's default {name} (not configured)"
            raise OllamaFailure(
                ErrorCode.BAD_REQUEST,
                f"option {name}={_shown(asked)} is a runner option, which ollamad sets for "
                f"every client: {runs}. Leave it out, or ask the operator to set it in "
                f'[runner_options."{names.key(model)}"] (ollama.client_runner_options = true '
                f"lets clients choose on a single-tenant host; each change reloads the model)",
                retryable=False)
        if self.clients_may_set:
            return {**configured, **{k: v for k, v in options.items() if v is not None}}
        return {**options, **configured}


_UNSET = object()


def _shown(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)
