"""Pretend GPU memory: weights plus num_ctx × parallel of KV cache, and what does not fit.

Numbers from Ollama's source: the default num_ctx by VRAM tier
(server/routes.go:2049-2057), the KV cache sized for `-c num_ctx*N -np N`
(llm/llama_server.go:375-376), one slot for embedding models
(server/sched.go:499-510). llama3.1:8b: 4,920,753,328 bytes of weights and
128 KiB of f16 KV per token (32 layers × 8 KV heads × 128 × 2 × 2 bytes).
"""

from __future__ import annotations

import pytest
import requests

MODEL = "llama3.1:8b"
TIMEOUT = 10.0
GIB = 1 << 30
WEIGHTS = 4_920_753_328
KV_PER_TOKEN = 128 * 1024


def load(standin, model: str = MODEL, **options) -> dict:
    """Load `model` (with these options); returns its /api/ps entry."""
    path = "/api/embed" if "embed" in model else "/api/generate"  # an empty request loads
    answer = requests.post(standin.url + path, timeout=TIMEOUT,
                           json={"model": model, "options": options})
    assert answer.status_code == 200, answer.text
    models = requests.get(standin.url + "/api/ps", timeout=TIMEOUT).json()["models"]
    return next(entry for entry in models if entry["name"] == model)


@pytest.mark.parametrize("vram, num_ctx", [
    (16 * GIB, 4096), (23 * GIB, 32768), (24 * GIB, 32768),
    (80 * GIB, 131072),  # 262144 from 47 GiB, capped at llama3.1's training context
])
def test_the_default_context_follows_the_vram(ollama_standin_factory, vram, num_ctx):
    standin = ollama_standin_factory(vram=vram)
    entry = load(standin)
    assert entry["context_length"] == num_ctx
    assert entry["size"] == WEIGHTS + num_ctx * KV_PER_TOKEN


def test_ollama_context_length_sets_the_default(ollama_standin_factory):
    standin = ollama_standin_factory(context_length=8192)
    assert load(standin)["context_length"] == 8192
    assert load(standin, "qwen3:0.6b")["context_length"] == 8192


def test_the_kv_cache_is_num_ctx_times_parallel_and_spills_to_the_cpu(ollama_standin_factory):
    alone = load(ollama_standin_factory(vram=24 * GIB, num_parallel=1))
    assert alone["size"] == alone["size_vram"] == WEIGHTS + 32768 * KV_PER_TOKEN
    crowded = load(ollama_standin_factory(vram=24 * GIB, num_parallel=8))
    assert crowded["size"] == WEIGHTS + 8 * 32768 * KV_PER_TOKEN  # ~39 GB
    assert crowded["size_vram"] == 24 * GIB < crowded["size"]  # partly on the CPU


def test_what_runs_on_the_cpu_generates_slower(ollama_standin_factory):
    standin = ollama_standin_factory(vram=24 * GIB, num_parallel=8, token_delay=0.02)

    def eval_seconds(**options) -> float:
        answer = requests.post(standin.url + "/api/generate", timeout=TIMEOUT, json={
            "model": MODEL, "prompt": "hi", "stream": False,
            "options": {"num_predict": 10, **options}}).json()
        assert answer["eval_count"] == 10
        return answer["eval_duration"] / 1e9

    on_gpu = eval_seconds(num_ctx=2048)  # 4.9 GB + 8 × 256 MiB: fits
    split = eval_seconds()  # 32768 × 8: a third of it on the CPU
    assert split > 1.5 * on_gpu  # 2.0× by the placement; without it they would be alike


def test_embedding_models_get_one_slot(ollama_standin_factory):
    standin = ollama_standin_factory(num_parallel=8)
    entry = load(standin, "nomic-embed-text:latest")
    [runner] = standin.state()["runners"]
    assert runner["parallel"] == 1
    assert entry["context_length"] == 2048  # its training context
    assert entry["size"] == 274_302_450 + 2048 * 36 * 1024
    load(standin)
    chat = next(r for r in standin.state()["runners"] if r["model"] == MODEL)
    assert chat["parallel"] == 8


def test_without_a_gpu_or_with_num_gpu_0_everything_is_on_the_cpu(ollama_standin_factory):
    assert load(ollama_standin_factory(vram=0))["size_vram"] == 0
    assert load(ollama_standin_factory(), num_gpu=0)["size_vram"] == 0


def test_a_model_that_does_not_fit_beside_an_idle_one_evicts_it(ollama_standin_factory):
    standin = ollama_standin_factory(vram=6 * GIB)
    load(standin, "llama3.2:1b")
    entry = load(standin)  # 4.9 GB + 4096 × 128 KiB would not fit beside it
    assert entry["size_vram"] == entry["size"]
    assert [r["model"] for r in standin.state()["runners"]] == [MODEL]
