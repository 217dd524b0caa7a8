"""`StandIn` and the pytest plugin: what users of the stand-in rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import psutil
import pytest
import requests

from ollamad.testing import StandIn, StandInError

TIMEOUT = 10.0


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_context_manager_exposes_a_running_server():
    with StandIn(models=["llama3.2:1b"]) as standin:
        assert standin.url == f"http://127.0.0.1:{standin.port}" and standin.port > 0
        assert standin.host == f"127.0.0.1:{standin.port}"
        assert standin.state()["pid"] == standin.pid == standin.process.pid
        tags = requests.get(standin.url + "/api/tags", timeout=TIMEOUT).json()
        assert [model["name"] for model in tags["models"]] == ["llama3.2:1b"]
    assert standin.process is None and "Listening on" in standin.log_text
    assert standin.stop() is None  # stopping twice is harmless


def test_everything_is_stopped_when_the_body_raises(wait_until):
    with pytest.raises(RuntimeError, match="boom"):
        with StandIn() as standin:
            requests.post(standin.url + "/api/generate", json={"model": "llama3.1:8b"},
                          timeout=TIMEOUT)
            pids = [standin.pid, *standin.runner_pids()]
            raise RuntimeError("boom")
    assert len(pids) == 2 and all(gone(pid) for pid in pids)


def test_environment_carries_every_knob():
    env = StandIn.environment(token_delay=0.5, load_time=1, models=["a:1b", "b"],
                              vram=1024, faults=["busy:2", {"kind": "hang"}],
                              num_parallel=8, keep_alive="1m")
    assert env == {
        "OLLAMAD_STANDIN_TOKEN_DELAY": "0.5", "OLLAMAD_STANDIN_PROMPT_RATE": "0.0",
        "OLLAMAD_STANDIN_LOAD_TIME": "1.0", "OLLAMAD_STANDIN_STARTUP_DELAY": "0.0",
        "OLLAMAD_STANDIN_MODELS": "a:1b,b", "OLLAMAD_STANDIN_VRAM": "1024",
        "OLLAMAD_STANDIN_FAULTS": "busy:2,hang", "OLLAMA_NUM_PARALLEL": "8",
        "OLLAMA_KEEP_ALIVE": "1m"}


def test_environment_configures_a_stand_in_started_elsewhere():
    env = StandIn.environment(models=["llama3.2:1b"], vram=12345, faults=["busy:1"])
    with StandIn(env=env) as standin:  # only the environment says how it is set up
        assert standin.state()["faults"] == [{"kind": "busy", "remaining": 1}]
        url = standin.url + "/api/generate"
        assert requests.post(url, json={"model": "llama3.2:1b"}, timeout=TIMEOUT).status_code == 503
        assert requests.post(url, json={"model": "llama3.2:1b"}, timeout=TIMEOUT).status_code == 200
        [loaded] = requests.get(standin.url + "/api/ps", timeout=TIMEOUT).json()["models"]
        assert loaded["size_vram"] == 12345


def test_a_stand_in_that_cannot_start_is_reported_and_cleaned_up():
    with pytest.raises(StandInError, match="status 2") as error:
        StandIn(env={"OLLAMAD_STANDIN_TOKEN_DELAY": "slow"}).start()
    assert "OLLAMAD_STANDIN_TOKEN_DELAY" in str(error.value)


def test_plugin_fixtures_stop_everything_even_after_a_failing_test(tmp_path, wait_until):
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import json, os, requests

        def test_uses_the_fixtures(ollama_standin, ollama_standin_factory):
            extra = ollama_standin_factory(models=["llama3.2:1b"])
            requests.post(extra.url + "/api/generate", json={"model": "llama3.2:1b"},
                          timeout=10)
            pids = [ollama_standin.pid, extra.pid, *extra.runner_pids()]
            with open(os.environ["PIDS_FILE"], "w") as out:
                json.dump(pids, out)
            assert False, "fail on purpose: teardown must still clean up"
    """))
    pids_file = tmp_path / "pids.json"
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PIDS_FILE": str(pids_file)})
    assert inner.returncode == 1 and "1 failed" in inner.stdout, inner.stdout + inner.stderr
    pids = json.loads(pids_file.read_text())
    assert len(pids) == 3
    wait_until(lambda: all(gone(pid) for pid in pids), what="cleanup")
