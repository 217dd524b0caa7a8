"""The daemon against an Ollama that behaves like v0.33 (the stand-in does): loads,
runner options, model names.

- Ollama aborts a load whose client went away: the daemon loads models on a
  connection of its own that no request's time-out cuts, and requests wait
  for the load within their own deadlines.
- Runner options (num_ctx, ...) are part of a loaded runner: the daemon sends
  the configured ones with every request, its probe included, and refuses a
  client's differing ones, so nothing reloads the model behind the others'
  backs.
- /api/ps names always carry a tag (`llama3:latest`): a configured `llama3`
  is the same model.
"""

from __future__ import annotations

import time

import pytest

from ollamad_client import OllamadError

FAST_PROBES = {"probe_interval": 0.2, "probe_timeout": 0.5, "inference_probe_timeout": 0.5,
               "hang_after": 1.0, "restart_backoff_initial": 0.1}


def runner_pids(daemon) -> list[int]:
    return [runner["pid"] for runner in daemon.standin_state()["runners"]]


def test_a_15_s_load_is_never_cut_by_a_request_and_happens_once(daemon_factory):
    # The default attempt time-out (10 s) and attempts; no warm-up, so the first
    # request meets the whole 15 s load.
    daemon = daemon_factory({"attempt_timeout": 10.0, "max_attempts": 3,
                             "ollama": {"warm_model": False, "probe_interval": 60.0}},
                            env={"OLLAMAD_STANDIN_LOAD_TIME": "15"})
    started = time.monotonic()
    with daemon.client(timeout=30.0) as client:
        with pytest.raises(OllamadError) as impatient:
            client.generate("in a hurry", timeout=5.0)
        assert impatient.value.code.value == "timeout"
        assert "load" in impatient.value.message and "goes on" in impatient.value.message
        [loading] = client.status()["ollama"]["loads_in_progress"]
        assert loading["model"] == "llama3.1:8b" and loading["for_s"] >= 4.0
        # The request gave up; the load did not. A request with the default deadline,
        # sent now, waits for that same load and is served.
        result = client.generate("patient", timeout=22.0)
        loaded_at = time.monotonic()
        assert result["text"] and loaded_at - started >= 14.0
        assert daemon.standin_state()["loads"] == {"started": 1, "aborted": 0}
        # And the next request finds the model loaded.
        again = client.generate("and again")
        assert again["text"] and again["load_duration_ns"] < 1e9
        assert time.monotonic() - loaded_at < 3.0
    assert daemon.standin_state()["loads"] == {"started": 1, "aborted": 0}


def test_a_clients_num_ctx_and_the_probe_do_not_reload_the_model(daemon_factory, wait_for):
    daemon = daemon_factory({"ollama": {"probe_interval": 0.1},
                             "runner_options": {"llama3.1:8b": {"num_ctx": 8192}}})
    with daemon.client() as client:
        client.generate("hello", options={"num_ctx": 8192})
        [serving] = runner_pids(daemon)
        daemon.standin("POST", "/_standin/stats/reset")
        wait_for(lambda: sum(body.get("prompt") == "ping"
                             for body in daemon.standin_state()["recent_requests"]) >= 10,
                 15, "ten inference probes")
        client.generate("hello again", options={"num_ctx": 8192})
        client.generate("and without it")
    assert runner_pids(daemon) == [serving]
    assert daemon.standin_state()["runners"][0]["options"]["num_ctx"] == 8192


def test_a_clients_differing_runner_option_is_refused_naming_the_configured_one(daemon_factory):
    daemon = daemon_factory({"ollama": {"probe_interval": 60.0}})
    with daemon.client() as client:
        [serving] = runner_pids(daemon)
        daemon.quiesce()
        with pytest.raises(OllamadError) as refused:
            client.generate("hello", options={"num_ctx": 131072})
        with pytest.raises(OllamadError) as cpu:
            client.chat([{"role": "user", "content": "hi"}], options={"num_gpu": 0})
        # A sampling option and a runner option equal to the configured one both pass.
        assert client.generate("hi", options={"num_ctx": 4096, "temperature": 0.1})["text"]
    assert refused.value.code.value == "bad_request"
    assert "num_ctx=131072" in refused.value.message and "num_ctx=4096" in refused.value.message
    assert "ollama.context_length" in refused.value.message
    assert cpu.value.code.value == "bad_request" and "num_gpu=0" in cpu.value.message
    assert runner_pids(daemon) == [serving]
    assert daemon.standin_state()["stats"]["completed_generations"] == 1


def test_a_single_tenant_host_may_let_clients_choose_runner_options(daemon_factory):
    daemon = daemon_factory({"ollama": {"probe_interval": 60.0, "client_runner_options": True}})
    with daemon.client() as client:
        [before] = runner_pids(daemon)
        assert client.generate("hello", options={"num_ctx": 8192})["text"]
    [after] = runner_pids(daemon)
    assert after != before   # reloaded, as asked
    assert daemon.standin_state()["runners"][0]["options"]["num_ctx"] == 8192


def test_a_wedge_of_a_model_configured_without_its_tag_is_found(daemon_factory, wait_for):
    daemon = daemon_factory({"model": "llama3", "ollama": {"warm_model": False, **FAST_PROBES}},
                            env={"OLLAMAD_STANDIN_MODELS": "llama3"})
    with daemon.client() as client:
        assert client.generate("hello")["text"]  # llama3 is loaded now
        daemon.set_fault("hang")  # and wedged: every generation hangs
        wait_for(lambda: client.status()["ollama"]["restarts"] >= 1, 4, "a restart for the wedge")


def test_a_model_split_between_gpu_and_cpu_is_reported_degraded_with_its_share(daemon_factory,
                                                                              wait_for):
    # 6 GiB of pretend VRAM: llama3.1:8b's weights fit, its KV cache (4096 x 9 slots) not all.
    daemon = daemon_factory({"ollama": {"probe_interval": 0.2}},
                            env={"OLLAMAD_STANDIN_VRAM": str(6 << 30)})
    [model] = daemon.wait_ready()["ollama"]["models"]
    assert 0 < model["gpu_share"] < 1 and model["size_vram"] < model["size"]
    with daemon.client() as client:
        health = wait_for(lambda: (h := client.health())["status"] == "degraded" and h, 10,
                          "degraded")
    assert any(f"llama3.1:8b is only {model['gpu_share']:.0%} on the GPU" in reason
               for reason in health["reasons"]), health


def test_an_inference_probe_that_gets_an_error_answer_is_reported(daemon_factory, wait_for):
    # The configured model is not installed: every probe is a 404, never a hang, so hang
    # detection is blind; health must say so instead of "healthy".
    daemon = daemon_factory({"model": "not-installed:1b", "ollama": {"probe_interval": 0.2}},
                            ready=False)
    with daemon.client(timeout=5.0) as client:
        health = wait_for(lambda: (h := client.health())["status"] == "degraded" and h, 15,
                          "degraded")
    [reason] = [r for r in health["reasons"] if "inference probe" in r]
    assert "not-installed:1b" in reason and "not found" in reason and "blind" in reason


def test_a_slow_load_under_fast_probes_is_not_taken_for_a_hang(daemon_factory):
    # The probe would queue behind the 3 s load and time out after 0.5 s, with a request
    # in flight and no chunk for longer than hang_after: a hang, but for the load.
    daemon = daemon_factory({"ollama": {"warm_model": False, **FAST_PROBES}},
                            env={"OLLAMAD_STANDIN_LOAD_TIME": "3"})
    with daemon.client(timeout=20.0) as client:
        assert client.generate("worth the wait")["text"]
        status = client.status()["ollama"]
    assert status["restarts"] == 0 and status["state"] == "RUNNING"
    assert daemon.standin_state()["loads"] == {"started": 1, "aborted": 0}


def test_runner_options_reloaded_apply_to_the_next_request(daemon_factory, wait_for):
    import os
    import signal
    daemon = daemon_factory({"ollama": {"probe_interval": 60.0}})
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(text + '[runner_options."llama3.1:8b"]\nnum_batch = 256\n')
    os.kill(daemon.process.pid, signal.SIGHUP)
    wait_for(lambda: "applied now: runner_options" in daemon.log(), 10, "the reload")
    with daemon.client() as client:
        assert client.generate("after the reload")["text"]
        with pytest.raises(OllamadError) as refused:
            client.generate("other batch", options={"num_batch": 512})
    assert daemon.sent("after the reload")["options"]["num_batch"] == 256
    assert 'set by [runner_options."llama3.1:8b"]' in refused.value.message
