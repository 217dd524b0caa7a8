"""The process shape of `ollama serve`: runners, orphans, signals, ports, start-up, logging.

The runner process makes the tokens, as llama-server does, and the server
only proxies them: a stopped runner stalls what it serves while the server
still answers `/` (the wedge users of Ollama report).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

MODEL = "llama3.1:8b"
TIMEOUT = 10.0


def load(standin, model: str = MODEL) -> int:
    """Load `model`; returns its runner's pid."""
    requests.post(standin.url + "/api/generate", json={"model": model}, timeout=TIMEOUT)
    return next(r["pid"] for r in standin.state()["runners"] if r["model"] == model)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_runner_is_a_child_in_the_servers_group(ollama_standin):
    pid = load(ollama_standin)
    runner = psutil.Process(pid)
    assert "runner" in " ".join(runner.cmdline()) and MODEL in runner.cmdline()
    assert runner.ppid() == ollama_standin.pid
    assert os.getpgid(pid) == os.getpgid(ollama_standin.pid) == ollama_standin.pid


def test_kill_9_orphans_the_runner(ollama_standin, wait_until):
    pid = load(ollama_standin)
    os.kill(ollama_standin.pid, signal.SIGKILL)
    wait_until(lambda: ollama_standin.process.poll() is not None, what="server death")
    assert alive(pid), "the runner should outlive a SIGKILLed server, as Ollama's does"
    assert psutil.Process(pid).ppid() != ollama_standin.pid
    assert ollama_standin.stop() == -signal.SIGKILL
    wait_until(lambda: not alive(pid), what="orphan sweep")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_termination_signal_stops_everything_with_status_0(ollama_standin, wait_until, signum):
    pids = [load(ollama_standin, MODEL), load(ollama_standin, "llama3.2:1b")]
    ollama_standin.process.send_signal(signum)
    ollama_standin.process.send_signal(signum)  # only the first one counts
    assert ollama_standin.process.wait(timeout=TIMEOUT) == 0
    assert not any(alive(pid) for pid in pids)


def test_sigterm_cuts_streams_short(ollama_standin_factory):
    standin = ollama_standin_factory(token_delay=0.05)
    with requests.post(standin.url + "/api/generate", timeout=TIMEOUT, stream=True,
                       json={"model": MODEL, "prompt": "long story"}) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines))
        assert first["done"] is False
        standin.process.send_signal(signal.SIGTERM)
        with pytest.raises(requests.exceptions.RequestException):
            for line in lines:
                assert not json.loads(line)["done"]
    assert standin.process.wait(timeout=TIMEOUT) == 0


def test_taken_port_exits_1_with_gos_message():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ollamad", "stand-in"], capture_output=True, text=True,
            timeout=TIMEOUT, env={**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}"})
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: listen tcp 127.0.0.1:{port}: bind: address already in use\n")


def test_startup_delay_accepts_connections_but_answers_later(ollama_standin_factory):
    standin = ollama_standin_factory(startup_delay=1.0, wait_ready=False)
    listening_at = time.monotonic()
    with socket.create_connection(("127.0.0.1", standin.port), timeout=TIMEOUT) as early:
        early.settimeout(0.3)
        early.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(socket.timeout):
            early.recv(100)  # connected, but nobody answers yet
        early.settimeout(TIMEOUT)
        assert early.recv(100).startswith(b"HTTP/1.1 200 OK")
    assert time.monotonic() - listening_at >= 0.9


def test_a_dead_runner_unloads_its_model(ollama_standin, wait_until):
    first = load(ollama_standin)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not ollama_standin.state()["runners"], what="unload")
    second = load(ollama_standin)
    assert second != first and alive(second)


def test_max_loaded_models_evicts_the_least_recently_used(ollama_standin_factory, wait_until):
    standin = ollama_standin_factory(env={"OLLAMA_MAX_LOADED_MODELS": "1"})
    first = load(standin, MODEL)
    load(standin, "llama3.2:1b")
    assert [r["model"] for r in standin.state()["runners"]] == ["llama3.2:1b"]
    wait_until(lambda: not alive(first), what="evicted runner exit")


def test_runner_exits_after_its_maximum_lifetime(ollama_standin_factory, wait_until):
    standin = ollama_standin_factory(runner_max_lifetime=0.5)
    pid = load(standin)
    wait_until(lambda: not alive(pid), what="runner self-exit")
    wait_until(lambda: not standin.state()["runners"], what="unload")


def generate(standin, timeout: float = TIMEOUT, **body) -> requests.Response:
    return requests.post(standin.url + "/api/generate", timeout=timeout,
                         json={"model": MODEL, "prompt": "hi", "stream": False, **body})


def test_a_stopped_runner_stalls_generation_while_the_server_answers(ollama_standin_factory,
                                                                     wait_for):
    standin = ollama_standin_factory(token_delay=0.01)
    expected = generate(standin).json()["response"]
    [runner] = standin.runner_pids()
    os.kill(runner, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(generate, standin)
            wait_for(lambda: standin.state()["stats"]["generations_in_flight"] == 1,
                     what="the held request")
            with pytest.raises(requests.exceptions.ReadTimeout):
                generate(standin, timeout=0.5)  # ~0.1 s of work, were the runner running
            for path in ("/", "/api/tags", "/api/version", "/api/ps"):
                assert requests.get(standin.url + path, timeout=TIMEOUT).status_code == 200
            assert not held.done()
            os.kill(runner, signal.SIGCONT)
            assert held.result(timeout=TIMEOUT).json()["response"] == expected
    finally:
        os.kill(runner, signal.SIGCONT)


@pytest.mark.parametrize("host, shown", [
    ("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "[::1]"),
    ("0.0.0.0:0", "[::]"), (":0", "[::]"),  # Go listens dual-stack on a wildcard
])
def test_the_listening_line_names_the_address_as_go_does(ollama_standin_factory, host, shown):
    standin = ollama_standin_factory(env={"OLLAMA_HOST": host})
    found = re.search(r"Listening on (\S+) \(version ([^)]+)\)", standin.log_path.read_text())
    assert found[1] == f"{shown}:{standin.port}" and found[2] == "0.33.0"
    assert requests.get(standin.url + "/", timeout=TIMEOUT).text == "Ollama is running"
    if shown == "[::]":  # both families answer
        url = f"http://[::1]:{standin.port}/"
        assert requests.get(url, timeout=TIMEOUT).text == "Ollama is running"


def test_it_dies_of_sigpipe_at_its_next_log_line_once_its_log_reader_is_gone(reaper, wait_for):
    env = {**os.environ, "OLLAMA_HOST": "127.0.0.1:0", "OLLAMAD_STANDIN_STARTUP_DELAY": "0"}
    server = reaper.python("-m", "ollamad", "stand-in", env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    startup = b""
    while b"vram-based default context" not in startup:  # the last line before serving
        startup += server.stderr.readline()
    port = int(re.search(rb"Listening on 127.0.0.1:(\d+)", startup)[1])
    server.stderr.close()  # the reader dies (a supervisor's log thread that crashed)
    assert server.poll() is None  # nothing to log, nothing happens
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).status_code == 200
    wait_for(lambda: server.poll() is not None, what="death at the [GIN] line")
    assert server.returncode == -signal.SIGPIPE
