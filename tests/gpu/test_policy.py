"""The GPU policies: memory pressure, CPU fallback, VRAM leak (with a hand-moved clock)."""

from __future__ import annotations

import pytest

from ollamad.gpu import (VramLeakPolicy, cpu_fallback, memory_pressure, models_vram_bytes,
                         partial_offload)

GiB = 1024 ** 3


def snapshot(*used_total: tuple[int | None, int | None], available: bool = True) -> dict:
    return {"available": available,
            "gpus": [{"index": i, "memory_used": used, "memory_total": total}
                     for i, (used, total) in enumerate(used_total)]}


def test_memory_pressure_names_each_gpu_above_the_threshold():
    snap = snapshot((75 * GiB, 80 * GiB), (70 * GiB, 80 * GiB), (None, 80 * GiB))
    assert memory_pressure(snap, 0.9) == [
        "GPU 0 memory 94% used (75.0 GiB of 80.0 GiB), above the 90% threshold"]
    assert memory_pressure(snap, 0.95) == []
    assert memory_pressure(snapshot(available=False), 0.9) == []
    with pytest.raises(ValueError):
        memory_pressure(snap, 1.5)


PS_MODELS = [
    {"name": "llama3.1:8b", "size": 6 * GiB, "size_vram": 0},
    {"name": "qwen2.5:32b", "size": 22 * GiB, "size_vram": 16 * GiB},  # split: not a fallback
    {"name": "nomic-embed-text", "size": 1 * GiB, "size_vram": 1 * GiB},
]


def test_cpu_fallback_names_models_with_no_vram_while_a_gpu_is_present():
    reasons = cpu_fallback(snapshot((8 * GiB, 80 * GiB)), PS_MODELS)
    assert len(reasons) == 1
    assert reasons[0].startswith(
        "model llama3.1:8b is running on the CPU (size_vram 0) although a GPU is present")
    assert "restart Ollama" in reasons[0]


def test_partial_offload_names_each_split_model_and_its_gpu_share():
    # Split models are slow whether or not NVML is there to see the GPU.
    assert partial_offload(PS_MODELS) == [
        "model qwen2.5:32b is only 73% on the GPU (16.0 GiB of 22.0 GiB); the rest runs on "
        "the CPU, slower: lower ollama.context_length or the slots (ollama.num_parallel), or "
        "use a smaller model"]
    assert partial_offload([{"name": "x", "size": 0, "size_vram": 0}]) == []


def test_cpu_fallback_is_silent_without_a_gpu():
    assert cpu_fallback(snapshot(available=False), PS_MODELS) == []
    assert cpu_fallback({"available": True, "gpus": []}, PS_MODELS) == []


def test_models_vram_bytes_sums_size_vram():
    assert models_vram_bytes(PS_MODELS) == 17 * GiB
    assert models_vram_bytes([]) == 0


def test_leak_fires_only_after_the_duration(fake_clock):
    policy = VramLeakPolicy(threshold_bytes=2 * GiB, duration_s=300, clock=fake_clock)
    assert policy.observe(10 * GiB, 7 * GiB, in_flight=0) is None  # 3 GiB excess: timer starts
    fake_clock.advance(299)
    assert policy.observe(10 * GiB, 7 * GiB, in_flight=0) is None
    fake_clock.advance(1)
    reason = policy.observe(10 * GiB, 7 * GiB, in_flight=0)
    assert reason == ("Ollama holds 3.0 GiB of GPU memory beyond its loaded models (10.0 GiB held,"
                      " 7.0 GiB in /api/ps) for 300 s, above the 2.0 GiB threshold:"
                      " restarting Ollama to free it")
    # firing starts the timer over
    assert policy.observe(10 * GiB, 7 * GiB, in_flight=0) is None


def test_leak_waits_while_requests_are_in_flight(fake_clock):
    policy = VramLeakPolicy(threshold_bytes=2 * GiB, duration_s=300, clock=fake_clock)
    policy.observe(10 * GiB, 7 * GiB, in_flight=3)
    fake_clock.advance(1000)
    assert policy.observe(10 * GiB, 7 * GiB, in_flight=1) is None  # due, but busy
    fake_clock.advance(5)
    assert "for 1005 s" in policy.observe(10 * GiB, 7 * GiB, in_flight=0)  # fires at the first idle moment


def test_leak_resets_when_the_excess_disappears(fake_clock):
    policy = VramLeakPolicy(threshold_bytes=2 * GiB, duration_s=300, clock=fake_clock)
    policy.observe(10 * GiB, 7 * GiB, in_flight=0)
    fake_clock.advance(200)
    assert policy.observe(9 * GiB, 7 * GiB, in_flight=0) is None  # exactly the threshold: no excess
    fake_clock.advance(200)
    assert policy.observe(10 * GiB, 7 * GiB, in_flight=0) is None  # timer restarted here
    fake_clock.advance(299)
    assert policy.observe(10 * GiB, 7 * GiB, in_flight=0) is None
    fake_clock.advance(1)
    assert policy.observe(10 * GiB, 7 * GiB, in_flight=0) is not None


def test_leak_resets_when_ollama_vram_is_unknown(fake_clock):
    policy = VramLeakPolicy(threshold_bytes=2 * GiB, duration_s=300, clock=fake_clock)
    policy.observe(10 * GiB, 7 * GiB, in_flight=0)
    fake_clock.advance(200)
    assert policy.observe(None, 7 * GiB, in_flight=0) is None
    fake_clock.advance(200)
    assert policy.observe(10 * GiB, 7 * GiB, in_flight=0) is None


@pytest.mark.parametrize("threshold", [None, 0])
def test_leak_policy_disabled_never_fires(threshold, fake_clock):
    policy = VramLeakPolicy(threshold_bytes=threshold, duration_s=0, clock=fake_clock)
    assert not policy.enabled
    fake_clock.advance(10_000)
    assert policy.observe(70 * GiB, 0, in_flight=0) is None
