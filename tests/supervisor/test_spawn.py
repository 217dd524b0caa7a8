"""Spawn mode against the real stand-in: start, kill -9, wedge, slow progress, port in use, stop."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import socket
import sys
import threading
import time

import psutil
import requests

from ollamad.supervisor import State

MODEL = "llama3.1:8b"


def running(supervisor, wait_for, timeout=15.0) -> dict:
    assert supervisor.wait_running(time.monotonic() + timeout), supervisor.snapshot()
    return supervisor.snapshot()


def with_runner(supervisor, wait_for) -> dict:
    """The snapshot once the warm-up's runner shows up in it."""
    return wait_for(lambda: (s := supervisor.snapshot())["process"] and s["process"]["runners"]
                    and s, 10, "the warmed model's runner")


def control(url: str, method: str = "GET", body: dict | None = None) -> dict:
    response = requests.request(method, url + ("/_standin/faults" if body else "/_standin/state"),
                                json=body, timeout=5)
    response.raise_for_status()
    return response.json()


def generate(url: str, num_predict: int = 3, timeout: float = 10.0) -> requests.Response:
    return requests.post(url + "/api/generate", timeout=timeout,
                         json={"model": MODEL, "prompt": "hello", "stream": False,
                               "options": {"num_predict": num_predict}})


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_running_only_once_root_answers_and_warm_model_is_listed(supervise, make_config, wait_for,
                                                                 monkeypatch):
    monkeypatch.setenv("OLLAMAD_STANDIN_STARTUP_DELAY", "1.0")
    supervisor, _, states = supervise(make_config())
    url = wait_for(lambda: supervisor.url, 10, "the port from the log")
    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=2):
        pass   # the port accepts connections ...
    assert supervisor.state is State.STARTING   # ... but that is not RUNNING
    snap = running(supervisor, wait_for)
    assert states[:2] == ["STARTING", "RUNNING"]
    assert snap["url"] == url and snap["last_probe"]["ok"]
    snap = wait_for(lambda: (s := supervisor.snapshot())["models"] and s, 10, "the warm model")
    assert [(m["name"], m["on_gpu"]) for m in snap["models"]] == [(MODEL, True)]
    assert [r["model"] for r in control(url)["runners"]] == [MODEL]


def test_an_ipv6_server_on_port_0_is_found_and_proven_ours(supervise, make_config, wait_for):
    supervisor, _, _ = supervise(make_config(url="http://[::1]:0"))
    snap = running(supervisor, wait_for)
    assert snap["url"].startswith("http://[::1]:") and not snap["url"].endswith(":1")
    assert generate(snap["url"]).status_code == 200


def test_kill_9_restarts_and_sweeps_the_orphaned_runner(supervise, make_config, wait_for):
    supervisor, system, _ = supervise(make_config())
    running(supervisor, wait_for)
    before = with_runner(supervisor, wait_for)
    server, runner = before["pid"], before["process"]["runners"][0]["pid"]

    os.kill(server, signal.SIGKILL)
    after = wait_for(lambda: (s := supervisor.snapshot())["state"] == "RUNNING"
                     and s["pid"] != server and s, 10, "a new server")
    # The runner outlived its server (the kill -9 did not take it) and the sweep killed it.
    assert ("kill", runner, signal.SIGKILL) in system.signals
    assert runner in system.alive_when_killed
    wait_for(lambda: gone(runner), 5, "the orphaned runner to be gone")
    assert after["restarts"] == 1 and after["orphans_swept"] == 1
    assert after["last_reason"] == "killed by signal 9 (SIGKILL)"
    assert after["last_exit"]["signal"] == signal.SIGKILL
    assert generate(after["url"]).status_code == 200


def test_wedged_generation_is_detected_and_restarted(supervise, make_config, wait_for):
    config = make_config()
    supervisor, _, _ = supervise(config)
    server = running(supervisor, wait_for)["pid"]
    wedged_at = time.monotonic()
    control(supervisor.url, "POST", {"kind": "hang", "count": None})
    assert requests.get(supervisor.url + "/", timeout=2).status_code == 200   # "/" still answers

    # While the old server stops, pid is None: wait for the new one's.
    snap = wait_for(lambda: (s := supervisor.snapshot())["pid"] not in (server, None) and s, 10,
                    "a restart")
    detected = time.monotonic() - wedged_at
    settings = config.ollama
    # Next round (<= 1 interval) + the probe's time-out + stopping and starting the server.
    assert detected < settings.probe_interval * 3 + settings.inference_probe_timeout + 2.0
    assert snap["last_reason"].startswith("hung: inference probe timed out after 0.5 s")
    assert snap["restarts"] == 1
    snap = running(supervisor, wait_for)
    assert generate(snap["url"]).json()["done"] is True


def test_progressing_generation_is_never_killed(supervise, make_config, wait_for, monkeypatch):
    """One slot: the inference probe queues behind a slow, streaming generation and times out,
    but the generation keeps making progress, so Ollama is not hung."""
    # A chunk every 0.2 s (well within hang_after 0.5 s) for a dozen chunks or so.
    monkeypatch.setenv("OLLAMAD_STANDIN_TOKEN_DELAY", "0.2")
    tracker = {"in_flight": 0, "last_chunk": time.monotonic()}
    progress = lambda: (tracker["in_flight"],
                        time.monotonic() - tracker["last_chunk"] if tracker["in_flight"] else None)
    config = make_config(num_parallel=1)
    supervisor, _, states = supervise(config, progress=progress)
    snap = running(supervisor, wait_for)
    probe_errors = []

    def stream() -> None:
        tracker["in_flight"] = 1
        tracker["last_chunk"] = time.monotonic()
        body = {"model": MODEL, "prompt": "tell me a long story", "stream": True,
                "options": {"num_predict": 12}}
        try:
            with requests.post(snap["url"] + "/api/generate", json=body, stream=True,
                               timeout=10) as response:
                for _ in response.iter_lines():
                    tracker["last_chunk"] = time.monotonic()
        finally:
            tracker["in_flight"] = 0

    worker = threading.Thread(target=stream)
    worker.start()
    while worker.is_alive():
        error = (supervisor.snapshot()["last_probe"] or {}).get("error") or ""
        if "inference" in error:
            probe_errors.append(error)
        worker.join(0.05)
    assert any("timed out" in e for e in probe_errors), "the probe never queued behind it"
    after = supervisor.snapshot()
    assert after["pid"] == snap["pid"] and after["restarts"] == 0
    assert "STOPPING" not in states and after["state"] == "RUNNING"


def test_server_that_stops_answering_is_restarted(supervise, make_config, wait_for):
    supervisor, _, _ = supervise(make_config(probe_timeout=0.3))
    server = running(supervisor, wait_for)["pid"]
    control(supervisor.url, "POST", {"kind": "unresponsive", "count": None})
    snap = wait_for(lambda: (s := supervisor.snapshot())["pid"] not in (server, None) and s, 10,
                    "a restart")
    assert snap["last_reason"] == "not answering GET / (3 probes): timed out after 0.3 s"


def test_stop_escalates_to_sigkill_within_its_timeout(supervise, make_config, wait_for):
    """A server that ignores SIGTERM: stop(2 s) cuts the 30 s grace short and SIGKILLs it."""
    stubborn = shlex.join([sys.executable, "-c", "import signal, time; "
                           "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    with socket.socket() as unused:   # a port nobody listens on: it stays STARTING
        unused.bind(("127.0.0.1", 0))
        config = make_config(stand_in=False, command=stubborn, stop_grace=30.0,
                             url=f"http://127.0.0.1:{unused.getsockname()[1]}")
        supervisor, system, _ = supervise(config)
        server = wait_for(lambda: supervisor.snapshot()["pid"], 10, "the server")
        wait_for(lambda: ignores_sigterm(server), 10, "the server to ignore SIGTERM")
        started = time.monotonic()
        supervisor.stop(2.0)
    assert time.monotonic() - started < 2.5
    assert supervisor.state is State.STOPPED and gone(server)
    assert [s for s in system.signals if s[0] == "killpg"] == [
        ("killpg", server, signal.SIGTERM), ("killpg", server, signal.SIGCONT),
        ("killpg", server, signal.SIGKILL)]


def ignores_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        ignored = next(line for line in status if line.startswith("SigIgn:")).split()[1]
    return bool(int(ignored, 16) & (1 << (signal.SIGTERM - 1)))


def test_port_in_use_is_fatal_at_once_and_names_the_holder(supervise, make_config, wait_for):
    """A port held by a socket that answers nothing: our server exits with Ollama's bind error.
    The holder (this test process) is named, and since restarts cannot free the port, it is
    FATAL without any."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        supervisor, system, _ = supervise(make_config(url=f"http://127.0.0.1:{port}",
                                                      max_restarts=5))
        wait_for(lambda: supervisor.state is State.FATAL, 15, "FATAL")
    snap = supervisor.snapshot()
    expected = f"exit code 1: Error: listen tcp 127.0.0.1:{port}: bind: address already in use"
    assert snap["last_exit"]["code"] == 1
    assert snap["fatal_reason"].startswith(f"{expected} (held by pid {os.getpid()} (")
    assert "set ollama.url to port 0" in snap["fatal_reason"]
    assert len(system.spawned) == 1 and snap["restarts"] == 0


def test_stop_leaves_nothing_and_the_child_env_is_an_allowlist(supervise, make_config, wait_for,
                                                               monkeypatch):
    for name, value in {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1000000",
                        "LISTEN_FDS": "1", "CREDENTIALS_DIRECTORY": "/run/credentials/ollamad",
                        "AWS_SECRET_ACCESS_KEY": "s3cr3t", "HF_TOKEN": "hf_x", "HF_HOME": "/hf",
                        "MY_CA_BUNDLE": "/ca.pem", "CUDA_VISIBLE_DEVICES": "1",
                        "NVIDIA_DRIVER_CAPABILITIES": "compute", "OLLAMA_DEBUG": "1",
                        "HTTPS_PROXY": "http://proxy:3128", "LC_ALL": "C.UTF-8"}.items():
        monkeypatch.setenv(name, value)
    config = make_config(workers=3)
    config = config.replace(ollama=dataclasses.replace(config.ollama,
                                                       pass_environment=("HF_HOME", "MY_CA_*")))
    supervisor, system, states = supervise(config)
    running(supervisor, wait_for)
    snap = with_runner(supervisor, wait_for)
    server = snap["pid"]
    runners = [r["pid"] for r in snap["process"]["runners"]]
    assert supervisor.ollama_pids() == {server, *runners}
    with open(f"/proc/{server}/environ", "rb") as environ:
        env = dict(item.split(b"=", 1) for item in environ.read().split(b"\0") if item)
    for dropped in (b"NOTIFY_SOCKET", b"WATCHDOG_USEC", b"LISTEN_FDS", b"CREDENTIALS_DIRECTORY",
                    b"AWS_SECRET_ACCESS_KEY", b"HF_TOKEN"):
        assert dropped not in env, dropped
    for kept in (b"PATH", b"CUDA_VISIBLE_DEVICES", b"NVIDIA_DRIVER_CAPABILITIES", b"OLLAMA_DEBUG",
                 b"HTTPS_PROXY", b"LC_ALL", b"HF_HOME", b"MY_CA_BUNDLE"):
        assert kept in env, kept
    assert env[b"OLLAMA_HOST"] == b"127.0.0.1:0" and env[b"OLLAMA_NUM_PARALLEL"] == b"4"

    supervisor.stop(10.0)
    assert supervisor.state is State.STOPPED and states[-2:] == ["STOPPING", "STOPPED"]
    assert ("killpg", server, signal.SIGTERM) in system.signals
    assert all(gone(pid) for pid in [server, *runners])
    assert not supervisor.wait_running(time.monotonic() + 1)


def test_restart_request_and_reload(supervise, make_config, wait_for):
    config = make_config()
    supervisor, system, states = supervise(config)
    server = running(supervisor, wait_for)["pid"]
    supervisor.request_restart("operator asked")
    snap = wait_for(lambda: (s := supervisor.snapshot())["pid"] not in (server, None)
                    and s["state"] == "RUNNING" and s, 10, "the restarted server")
    assert snap["restarts"] == 1 and snap["restarts_in_window"] == 0
    assert snap["last_reason"] == "restart requested: operator asked"
    assert "STOPPED" in states   # an operator's restart is stop + start, not a failure
    reloaded = config.replace(ollama=dataclasses.replace(config.ollama, probe_interval=0.5,
                                                         num_parallel=4))
    assert supervisor.reconfigure(reloaded) == ["ollama.num_parallel"]
    assert supervisor.snapshot()["pid"] == snap["pid"]   # a reload alone restarts nothing
