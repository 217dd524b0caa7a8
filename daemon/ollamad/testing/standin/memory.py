"""Pretend GPU memory: how big a runner is, how much of it the GPU holds, what that costs.

A runner needs the model's weights plus its KV cache, and Ollama sizes the
cache for `num_ctx × parallel` tokens (llm/llama_server.go:375-376 starts
llama-server with `-c num_ctx*N -np N`). What does not fit in the free VRAM
goes to the CPU: `/api/ps` then shows `size_vram < size` (0 with no GPU or
`num_gpu: 0`), and the runner works slower. The default `num_ctx` follows
the VRAM (server/routes.go:2049-2057), capped at the model's training context.
"""

from __future__ import annotations

from dataclasses import dataclass

from ollamad.testing.standin.catalog import Model

GIB = 1 << 30
#: How much longer a token takes on the CPU than on the GPU. Real ratios are
#: larger (memory bandwidth differs 10-30×); this is enough for the drop in
#: tokens per second to show without making slow tests slower still.
CPU_SLOWDOWN = 4.0


def default_num_ctx(vram_total: int) -> int:
    """Ollama's VRAM tiers (47/23 GiB thresholds, for GPUs reporting a little under)."""
    if vram_total >= 47 * GIB:
        return 262144
    if vram_total >= 23 * GIB:
        return 32768
    return 4096


def effective_num_ctx(num_ctx: int, model: Model) -> int:
    """What the runner really gets: at least 4 (sched.go getRunner), at most the training context."""
    return min(max(num_ctx, 4), model.context_length)


@dataclass(frozen=True)
class Placement:
    """Where a runner's bytes live."""

    size: int       # weights + KV cache
    size_vram: int  # the part on the GPU

    @property
    def slowdown(self) -> float:
        """Time per token relative to a runner wholly on the GPU."""
        if self.size == 0:
            return 1.0
        on_cpu = (self.size - self.size_vram) / self.size
        return 1.0 + (CPU_SLOWDOWN - 1.0) * on_cpu


def place(model: Model, num_ctx: int, slots: int, num_gpu: int, vram_free: int) -> Placement:
    """Weights and `num_ctx × slots` of KV cache, on the GPU as far as they fit.

    `num_gpu` is the number of layers to offload (-1: as many as fit, 0: none),
    as Ollama reads it.
    """
    size = model.size + num_ctx * slots * model.kv_bytes_per_token
    on_gpu = min(size, max(vram_free, 0))
    if num_gpu >= 0:
        on_gpu = min(on_gpu, size * min(num_gpu, model.block_count + 1) // (model.block_count + 1))
    return Placement(size, on_gpu)
