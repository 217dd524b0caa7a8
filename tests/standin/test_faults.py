"""Fault injection, and Ollama's concurrency limits (NUM_PARALLEL slots, MAX_QUEUE)."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from ollamad.testing import StandInError
from ollamad.testing.standin import config

MODEL = "llama3.1:8b"
TIMEOUT = 10.0
BUSY = "server busy, please try again.  maximum pending requests exceeded"
CRASHED = "an error was encountered while running the model: unexpected EOF"


def generate(standin, timeout: float = TIMEOUT, **body) -> requests.Response:
    return requests.post(standin.url + "/api/generate", timeout=timeout,
                         json={"model": MODEL, "prompt": "hi", **body})


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def generations_in_flight(standin) -> int:
    return standin.state()["stats"]["generations_in_flight"]


def test_count_limited_fault_expires(ollama_standin):
    state = ollama_standin.set_fault("busy", count=2)
    assert state["faults"] == [{"kind": "busy", "remaining": 2}]
    for _ in range(2):
        answer = generate(ollama_standin, stream=False)
        assert (answer.status_code, answer.json()) == (503, {"error": BUSY})
    assert ollama_standin.state()["faults"] == []
    assert generate(ollama_standin, stream=False).status_code == 200


def test_start_time_faults_from_the_environment(ollama_standin_factory):
    standin = ollama_standin_factory(faults=["busy:1", {"kind": "crash_mid_stream",
                                                        "count": 1, "after_tokens": 4}])
    assert standin.state()["faults"] == [
        {"kind": "busy", "remaining": 1},
        {"kind": "crash_mid_stream", "remaining": 1, "after_tokens": 4}]
    assert generate(standin).status_code == 503


def test_start_time_faults_from_flags_and_environment():
    settings = config.load(["--fault", "hang:1", "--fault", "busy"],
                           {"OLLAMAD_STANDIN_FAULTS": "exit:code=3, unresponsive:2"})
    assert [(f.kind, f.remaining, f.params) for f in settings.faults] == [
        ("exit", None, {"code": 3}), ("unresponsive", 2, {}), ("hang", 1, {"after_tokens": 0}),
        ("busy", None, {})]


def test_ollama_variables_are_read_like_ollama():
    def settings(**env):
        return config.load([], env)

    assert settings().keep_alive_ns == 300 * 10**9
    assert settings(OLLAMA_KEEP_ALIVE="300").keep_alive_ns == 300 * 10**9  # env takes seconds
    assert settings(OLLAMA_KEEP_ALIVE="1m").keep_alive_ns == 60 * 10**9
    assert settings(OLLAMA_KEEP_ALIVE="-1").keep_alive_ns == 2**63 - 1
    assert settings(OLLAMA_KEEP_ALIVE="soon").keep_alive_ns == 300 * 10**9
    assert (settings().num_parallel, settings().max_queue) == (1, 512)
    assert settings(OLLAMA_NUM_PARALLEL="8", OLLAMA_MAX_QUEUE="x").num_parallel == 8
    assert settings(OLLAMA_MAX_QUEUE="x").max_queue == 512
    assert (settings().context_length, settings(OLLAMA_CONTEXT_LENGTH="8192").context_length) == (
        0, 8192)
    assert settings().load_timeout_ns == 300 * 10**9
    assert settings(OLLAMA_LOAD_TIMEOUT="90").load_timeout_ns == 90 * 10**9
    assert settings(OLLAMA_LOAD_TIMEOUT="0").load_timeout_ns == 2**63 - 1  # 0 = no limit


def test_bad_faults_are_refused(ollama_standin):
    for kind, params in (("nope", {}), ("slow_start", {}), ("crash_mid_stream", {"x": 1})):
        with pytest.raises(StandInError, match="400"):
            ollama_standin.set_fault(kind, **params)


def test_hang_holds_generation_while_the_server_still_answers(ollama_standin, wait_until):
    ollama_standin.set_fault("hang", count=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        generate(ollama_standin, timeout=0.5)
    for path in ("/", "/api/tags", "/api/version"):
        assert requests.get(ollama_standin.url + path, timeout=TIMEOUT).status_code == 200
    # The client gave up and closed: the hung request ends and frees its slot.
    wait_until(lambda: generations_in_flight(ollama_standin) == 0, what="release")
    assert generate(ollama_standin, stream=False).status_code == 200


def test_a_hang_after_tokens_stalls_a_stream_that_has_begun(ollama_standin):
    ollama_standin.set_fault("hang", count=1, after_tokens=2)
    response = requests.post(ollama_standin.url + "/api/generate", stream=True, timeout=0.5,
                             json={"model": "llama3.1:8b", "prompt": "go", "stream": True,
                                   "options": {"num_predict": 8}})
    lines = response.iter_lines()
    first = [json.loads(next(lines)) for _ in range(2)]
    assert all(not chunk["done"] and chunk["response"] for chunk in first)
    with pytest.raises(requests.exceptions.ConnectionError, match="timed out"):
        next(lines)   # the third token never comes
    response.close()


def test_clearing_a_hang_lets_held_requests_finish(ollama_standin, wait_until):
    ollama_standin.set_fault("hang")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(generate, ollama_standin, stream=False)
        wait_until(lambda: generations_in_flight(ollama_standin) == 1, what="held request")
        assert not held.done()
        ollama_standin.clear_faults()
        assert held.result(timeout=TIMEOUT).status_code == 200


def test_crash_mid_stream_kills_the_runner_and_ends_the_stream(ollama_standin, wait_until):
    generate(ollama_standin, prompt="")
    [first] = ollama_standin.runner_pids()
    ollama_standin.set_fault("crash_mid_stream", count=1)
    answer = generate(ollama_standin)
    lines = [json.loads(line) for line in answer.content.splitlines()]
    assert answer.status_code == 200
    assert [line.get("done") for line in lines] == [False, False, None]
    assert lines[-1] == {"error": CRASHED}
    wait_until(lambda: not alive(first), what="runner death")
    assert ollama_standin.state()["runners"] == []
    assert generate(ollama_standin, stream=False).status_code == 200
    assert ollama_standin.runner_pids() != [first]


def test_crash_without_stream_or_before_the_first_token_is_500(ollama_standin):
    ollama_standin.set_fault("crash_mid_stream", count=2, after_tokens=0)
    whole = generate(ollama_standin, stream=False)
    assert (whole.status_code, whole.json()) == (500, {"error": CRASHED})
    assert whole.headers["Content-Type"] == "application/json; charset=utf-8"
    streamed = generate(ollama_standin)
    assert (streamed.status_code, streamed.json()) == (500, {"error": CRASHED})
    assert streamed.headers["Content-Type"] == "application/json"


def test_crash_applies_to_embed_too(ollama_standin):
    ollama_standin.set_fault("crash_mid_stream", count=1)
    answer = requests.post(ollama_standin.url + "/api/embed", timeout=TIMEOUT,
                           json={"model": "nomic-embed-text", "input": "x"})
    assert (answer.status_code, answer.json()) == (500, {"error": CRASHED})


def test_runner_terminated_is_a_500_before_streaming(ollama_standin):
    generate(ollama_standin, prompt="")
    [runner] = ollama_standin.runner_pids()
    ollama_standin.set_fault("runner_terminated", count=1)
    answer = generate(ollama_standin)
    assert (answer.status_code, answer.json()) == (
        500, {"error": "llama-server process has terminated: exit status 2"})
    assert not alive(runner) or runner not in ollama_standin.runner_pids()
    assert generate(ollama_standin, stream=False).status_code == 200


def test_unresponsive_holds_every_api_path_until_cleared(ollama_standin, wait_until):
    ollama_standin.set_fault("unresponsive")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(ollama_standin.url + "/", timeout=0.3)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(requests.get, ollama_standin.url + "/api/version", timeout=TIMEOUT)
        wait_until(lambda: ollama_standin.state()["stats"]["in_flight"] >= 1, what="held")
        assert ollama_standin.state()["faults"] == [{"kind": "unresponsive", "remaining": None}]
        ollama_standin.clear_faults()
        assert held.result(timeout=TIMEOUT).json() == {"version": "0.33.0"}


def test_exit_fault_exits_with_its_code_and_orphans_runners(ollama_standin, wait_until):
    generate(ollama_standin, prompt="")
    [runner] = ollama_standin.runner_pids()
    ollama_standin.set_fault("exit", code=3)
    wait_until(lambda: ollama_standin.process.poll() is not None, what="exit")
    assert ollama_standin.process.returncode == 3
    assert alive(runner)
    ollama_standin.stop()
    wait_until(lambda: not alive(runner), what="orphan sweep")


def test_exit_fault_at_start_time(ollama_standin_factory):
    with pytest.raises(StandInError, match="status 4"):
        ollama_standin_factory(faults=["exit:code=4"])


def test_slow_start_delays_readiness(ollama_standin_factory):
    started = time.monotonic()
    ollama_standin_factory(faults=["slow_start:seconds=0.5"])
    assert time.monotonic() - started >= 0.5


def test_stats_count_concurrent_generations_and_reset(ollama_standin_factory):
    standin = ollama_standin_factory(token_delay=0.02, num_parallel=4)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: generate(standin, stream=False,
                                                   options={"num_predict": 10}), range(4)))
    assert all(answer.status_code == 200 for answer in answers)
    stats = standin.state()["stats"]
    assert stats["max_generations_in_flight"] == 4 and stats["completed_generations"] == 4
    assert stats["generations_in_flight"] == 0 and stats["requests"]["POST /api/generate"] == 4
    assert standin.state()["recent_requests"][-1]["options"] == {"num_predict": 10}
    state = standin.reset_stats()
    assert state["stats"]["max_generations_in_flight"] == 0 and state["recent_requests"] == []


@pytest.mark.parametrize("parallel", [1, 3])
def test_num_parallel_limits_concurrent_generation(ollama_standin_factory, parallel):
    standin = ollama_standin_factory(token_delay=0.02, num_parallel=parallel)
    generate(standin, prompt="")  # load first, so only generation is timed
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: generate(standin, stream=False,
                                                   options={"num_predict": 10}).json(), range(3)))
    slowest = max(answer["total_duration"] for answer in answers) / 1e9
    if parallel == 1:
        assert slowest >= 2.5 * 10 * 0.02  # the last one waited for the two others
    else:
        assert slowest < 2 * 10 * 0.02


def test_queue_overflow_behind_a_load_is_503(ollama_standin_factory, wait_until):
    standin = ollama_standin_factory(load_time=1.0, max_queue=1)
    with ThreadPoolExecutor(3) as pool:
        loading = pool.submit(generate, standin, stream=False)
        wait_until(lambda: standin.state()["runners"], what="load start")
        queued = [pool.submit(generate, standin, stream=False) for _ in range(2)]
        statuses = sorted(f.result(timeout=TIMEOUT).status_code for f in queued)
        assert loading.result(timeout=TIMEOUT).status_code == 200
    assert statuses == [200, 503]


def test_a_killed_runner_fails_the_stream_in_progress(ollama_standin_factory):
    standin = ollama_standin_factory(token_delay=0.05)
    with requests.post(standin.url + "/api/generate", timeout=TIMEOUT, stream=True,
                       json={"model": MODEL, "prompt": "story"}) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False
        os.kill(standin.runner_pids()[0], signal.SIGKILL)
        rest = [json.loads(line) for line in lines]
    assert rest[-1] == {"error": CRASHED}
