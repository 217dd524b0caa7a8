"""Model loads as Ollama runs them: owned by their client, and part of the runner's options.

Ollama aborts a load whose client went away and kills the half-loaded runner
(llm/llama_server.go WaitUntilRunning, server/sched.go), so a retry after a
client time-out starts from zero. It reloads a model when a request's runner
options differ from the loaded runner's (server/sched.go needsReload).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

MODEL = "llama3.1:8b"
TIMEOUT = 10.0
ABORTED = "client connection closed before llama-server finished loading, aborting load"


def generate(standin, timeout: float = TIMEOUT, **body) -> requests.Response:
    return requests.post(standin.url + "/api/generate", timeout=timeout,
                         json={"model": MODEL, "prompt": "hi", "stream": False, **body})


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def runner_pid(standin) -> int:
    [runner] = standin.state()["runners"]
    return runner["pid"]


def _send_generate(standin, client: socket.socket):
    body = json.dumps({"model": MODEL, "prompt": "hi"}).encode()
    client.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                   % (len(body), body))


def test_a_client_leaving_during_the_load_aborts_it_and_kills_the_runner(
        ollama_standin_factory, wait_for):
    standin = ollama_standin_factory(load_time=1.0)
    with socket.create_connection(("127.0.0.1", standin.port), timeout=TIMEOUT) as client:
        _send_generate(standin, client)
        [loading] = wait_for(lambda: standin.state()["runners"], what="the load")
        assert loading["loading"] and alive(loading["pid"])
    # The client closed before the load ended: the load is aborted, its runner killed.
    wait_for(lambda: not alive(loading["pid"]), what="the half-loaded runner's death")
    assert ABORTED in standin.log_path.read_text()
    assert standin.state()["runners"] == []
    # The retry loads from zero: the whole load time again, in a new runner.
    retried = generate(standin).json()
    assert retried["load_duration"] >= 1.0 * 1e9
    assert runner_pid(standin) != loading["pid"]


def test_ps_does_not_list_a_model_while_it_loads(ollama_standin_factory, wait_for):
    standin = ollama_standin_factory(load_time=1.0)
    with socket.create_connection(("127.0.0.1", standin.port), timeout=TIMEOUT) as client:
        _send_generate(standin, client)
        wait_for(lambda: standin.state()["runners"], what="the load")
        assert requests.get(standin.url + "/api/ps", timeout=TIMEOUT).json() == {"models": []}
        client.settimeout(0.2)
        with pytest.raises(socket.timeout):
            client.recv(1)  # not a byte, not even headers, until the load is done
        client.settimeout(TIMEOUT)
        assert client.recv(12) == b"HTTP/1.1 200"
    [listed] = requests.get(standin.url + "/api/ps", timeout=TIMEOUT).json()["models"]
    assert listed["name"] == MODEL


def test_a_stalled_load_times_out_after_ollama_load_timeout(ollama_standin_factory, wait_for):
    standin = ollama_standin_factory(load_time=30.0, load_timeout="300ms")
    answer = generate(standin)
    assert (answer.status_code, answer.json()) == (
        500, {"error": "timed out waiting for llama-server to start - "})
    wait_for(lambda: not standin.state()["runners"], what="the stalled runner's end")


def test_a_runner_killed_while_loading_fails_the_load(ollama_standin_factory, wait_for):
    standin = ollama_standin_factory(load_time=30.0)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(generate, standin)
        pid = wait_for(lambda: standin.state()["runners"], what="the load")[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        answer = pending.result(timeout=TIMEOUT)
    assert (answer.status_code, answer.json()) == (
        500, {"error": "llama-server process has terminated: signal: killed"})


def test_sampling_options_share_the_loaded_runner(ollama_standin):
    generate(ollama_standin, prompt="")
    first = runner_pid(ollama_standin)
    for options in ({"temperature": 0}, {"seed": 7, "top_p": 0.5}, {"stop": ["x"]},
                    {"num_predict": 2}, {"num_gpu": -1}):
        answer = generate(ollama_standin, options=options).json()
        assert runner_pid(ollama_standin) == first, options
        assert answer["load_duration"] < 0.05 * 1e9


@pytest.mark.parametrize("options", [
    {"num_ctx": 8192}, {"num_batch": 256}, {"num_gpu": 10}, {"main_gpu": 1},
    {"use_mmap": False}, {"num_thread": 4}, {"draft_num_predict": 2},
])
def test_other_runner_options_reload_the_model(ollama_standin, options):
    generate(ollama_standin, prompt="")
    first = runner_pid(ollama_standin)
    answer = generate(ollama_standin, options=options).json()
    second = runner_pid(ollama_standin)
    assert second != first and answer["load_duration"] > 0
    again = generate(ollama_standin, options=options).json()  # the same options: no reload
    assert runner_pid(ollama_standin) == second and again["load_duration"] < 0.05 * 1e9
    generate(ollama_standin)  # back to the defaults: a reload again ...
    if "num_gpu" in options:  # ... except for num_gpu, whose default -1 matches any runner
        assert runner_pid(ollama_standin) == second
    else:
        assert runner_pid(ollama_standin) not in (first, second)


def test_an_automatic_num_ctx_matches_only_an_automatic_or_equal_one(ollama_standin):
    generate(ollama_standin, prompt="")  # automatic: 32768 with the default 24 GiB
    [loaded] = requests.get(ollama_standin.url + "/api/ps", timeout=TIMEOUT).json()["models"]
    assert loaded["context_length"] == 32768
    first = runner_pid(ollama_standin)
    generate(ollama_standin, options={"num_ctx": 32768})
    assert runner_pid(ollama_standin) == first
    generate(ollama_standin, options={"num_ctx": 2048})
    reloaded = runner_pid(ollama_standin)
    assert reloaded != first
    [loaded] = requests.get(ollama_standin.url + "/api/ps", timeout=TIMEOUT).json()["models"]
    assert loaded["context_length"] == 2048
    assert ollama_standin.state()["runners"][0]["options"]["num_ctx"] == 2048


def test_a_reload_waits_for_the_requests_on_the_old_runner(ollama_standin_factory, wait_for):
    standin = ollama_standin_factory(token_delay=0.02, num_parallel=2)
    whole = generate(standin, options={"num_predict": 20}).json()["response"]
    first = runner_pid(standin)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(generate, standin, options={"num_predict": 20})
        wait_for(lambda: standin.state()["stats"]["generations_in_flight"] == 1, what="start")
        reloading = pool.submit(generate, standin, options={"num_ctx": 4096, "num_predict": 1})
        assert running.result(timeout=TIMEOUT).json()["response"] == whole  # not cut short
        assert reloading.result(timeout=TIMEOUT).status_code == 200
    assert not alive(first) or first not in [r["pid"] for r in standin.state()["runners"]]
