"""The GPU watch inside the real daemon: no GPU here, and a scripted NVML."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

GIB = 1024 ** 3
FAKES = str(Path(__file__).parent / "fakes")




def test_without_a_gpu_the_daemon_serves_and_says_so_once(daemon, wait_for):
    with daemon.client() as client:
        gpu = client.gpu()
        assert client.generate("works without a GPU")["text"]
        health = client.health()
    assert gpu["available"] is False and "NVMLError_LibraryNotFound" in gpu["reason"]
    assert health["status"] == "healthy"  # no GPU is not a fault (stand-in hosts)
    wait_for(lambda: daemon.client().gpu()["poll_count"] >= 3, 10, "a few polls")
    assert daemon.log().count("NVMLError_LibraryNotFound") == 1


@pytest.fixture
def scripted_gpu(daemon_factory, short_tmp):
    """A daemon whose NVML is the scripted fake; returns (daemon, write_script)."""
    script = short_tmp / "nvml.json"

    def write(used: int, processes: list[dict], total: int = 80 * GIB) -> None:
        tmp = script.with_suffix(".tmp")
        tmp.write_text(json.dumps({"gpus": [{"name": "Fake H100", "memory_total": total,
                                             "memory_used": used, "processes": processes}]}))
        os.replace(tmp, script)  # never let the daemon read half a file

    write(0, [])

    def make(gpu_config: dict | None = None, env: dict | None = None):
        daemon = daemon_factory(
            {"gpu": {"nvml_module": "fake_pynvml", "poll_interval": 0.1, **(gpu_config or {})}},
            env={"PYTHONPATH": os.pathsep.join([FAKES, os.environ.get("PYTHONPATH", "")]),
                 "FAKE_NVML_SCRIPT": str(script), **(env or {})})
        return daemon, write
    return make


def test_vram_is_attributed_to_the_stand_ins_real_runner(scripted_gpu, wait_for):
    daemon, write = scripted_gpu()
    status = daemon.wait_ready()["ollama"]
    runner = status["process"]["runners"][0]["pid"]
    write(10 * GIB, [{"pid": runner, "used_memory": 6 * GIB}, {"pid": 1, "used_memory": 2 * GIB}])
    gpu = wait_for(lambda: (g := daemon.client().gpu())["ollama_vram_bytes"] == 6 * GIB and g, 10,
                   "the attribution")
    assert gpu["available"] and gpu["other_vram_bytes"] == 2 * GIB
    owned = {p["pid"]: p["ollama"] for p in gpu["gpus"][0]["processes"]}
    assert owned == {runner: True, 1: False}


def test_memory_pressure_reports_degraded_with_the_reason(scripted_gpu, wait_for):
    daemon, write = scripted_gpu({"memory_pressure": 0.9})
    write(78 * GIB, [])
    health = wait_for(lambda: (h := daemon.client().health())["status"] == "degraded" and h, 10,
                      "degraded")
    assert any("GPU 0 memory" in r for r in health["reasons"])


def test_a_model_on_the_cpu_while_a_gpu_is_present_is_degraded(scripted_gpu, wait_for):
    daemon, write = scripted_gpu(env={"OLLAMAD_STANDIN_VRAM": "0"})
    write(1 * GIB, [])
    health = wait_for(lambda: (h := daemon.client().health())["status"] == "degraded" and h, 10,
                      "degraded")
    assert any("llama3.1:8b" in r and "CPU" in r for r in health["reasons"]), health


def test_the_leak_policy_restarts_ollama_only_when_idle(scripted_gpu, reaper, wait_for):
    daemon, write = scripted_gpu({"leak_threshold_bytes": 1 * GIB, "leak_duration": 0.3},
                                 env={"OLLAMAD_STANDIN_TOKEN_DELAY": "0.15"})
    status = daemon.wait_ready()["ollama"]
    runner = status["process"]["runners"][0]["pid"]
    models_vram = sum(m["size_vram"] for m in status["models"])
    leaked = models_vram + 3 * GIB  # 3 GiB beyond what the loaded model accounts for
    write(leaked, [{"pid": runner, "used_memory": leaked}])
    with daemon.client(timeout=30.0) as client:
        wait_for(lambda: client.gpu()["ollama_vram_bytes"] == leaked, 10, "the leak to show")
        # A generation in flight for many times leak_duration: no restart.
        result = client.generate("keep the GPU busy", max_tokens=30)
        assert result["response_time"] > 5 * 0.3
        assert client.status()["ollama"]["restarts"] == 0
        # Idle now: the policy fires.
        after = wait_for(lambda: (s := client.status()["ollama"])["restarts"] >= 1 and s, 10,
                         "the leak restart")
    reaper.track(after["pid"])
    assert "beyond its loaded models" in after["last_reason"]
