"""Runner options: the options a loaded runner is made of, and when a request needs another.

Ollama starts a runner with a request's runner options (api/types.go Runner:
num_ctx, num_batch, num_gpu, main_gpu, use_mmap, num_thread,
draft_num_predict) and reloads the model when a later request's differ
(server/sched.go needsReload), whatever else it asks. An automatic num_ctx
or num_batch (the request did not set it) equals only another automatic
one, and num_gpu -1 ("as many layers as fit") matches anything. Sampling
options (temperature, seed, stop, ...) never reload.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, replace
from typing import Any, Mapping

from ollamad.testing.standin.catalog import Model
from ollamad.testing.standin.memory import effective_num_ctx

NAMES = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
         "draft_num_predict")


@dataclass(frozen=True)
class RunnerOptions:
    num_ctx: int  # what the runner gets: capped at the model's training context
    num_batch: int
    num_gpu: int
    main_gpu: int | None
    use_mmap: bool | None  # None: Ollama decides, and only another None matches it
    num_thread: int
    draft_num_predict: int
    num_ctx_auto: bool
    num_batch_auto: bool

    @classmethod
    def of(cls, model: Model, effective: Mapping[str, Any], requested: Mapping[str, Any],
           context_length: int, automatic_num_ctx: int) -> "RunnerOptions":
        """The runner options of a request: `effective` options (defaults overlaid with
        `requested`); num_ctx, when the request has none, is OLLAMA_CONTEXT_LENGTH
        (`context_length`, 0 = unset) or else `automatic_num_ctx`, Ollama's VRAM tier."""
        given = {name for name, value in requested.items() if value is not None}
        num_ctx_auto = "num_ctx" not in given and not context_length
        if "num_ctx" in given:
            num_ctx = effective["num_ctx"]
        else:
            num_ctx = context_length or automatic_num_ctx
        return cls(
            num_ctx=effective_num_ctx(num_ctx, model),
            num_batch=effective["num_batch"], num_gpu=effective["num_gpu"],
            main_gpu=effective["main_gpu"], use_mmap=effective["use_mmap"],
            num_thread=effective["num_thread"],
            # Without a draft model Ollama zeroes an unset draft_num_predict (routes.go).
            draft_num_predict=effective["draft_num_predict"] if "draft_num_predict" in given else 0,
            num_ctx_auto=num_ctx_auto, num_batch_auto="num_batch" not in given)

    def _compared(self) -> tuple:
        return astuple(self)[:len(NAMES)]

    def reloads(self, loaded: "RunnerOptions") -> bool:
        """True when a runner loaded with `loaded` cannot serve a request with these."""
        wanted = self
        if loaded.num_ctx_auto and wanted.num_ctx_auto:
            wanted = replace(wanted, num_ctx=loaded.num_ctx)
        if loaded.num_batch_auto and wanted.num_batch_auto:
            wanted = replace(wanted, num_batch=loaded.num_batch)
        if wanted.num_gpu < 0:
            wanted, loaded = replace(wanted, num_gpu=-1), replace(loaded, num_gpu=-1)
        return wanted._compared() != loaded._compared()

    def describe(self) -> dict[str, Any]:
        return dict(zip(NAMES, self._compared()))
