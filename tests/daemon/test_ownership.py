"""The daemon talks only to the Ollama it started, and stops the one a crashed daemon left."""

from __future__ import annotations

import json
import signal
import stat

import psutil
import pytest

from ollamad.supervisor.record import RECORD_NAME
from ollamad_client import OllamadError


def _state(client):
    try:
        return client.status()["ollama"]["state"]
    except OllamadError:
        return None


def running(process: psutil.Process) -> bool:
    """Still the same process (pid and create time) and not a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_foreign_server_on_the_fixed_port_gets_no_request_and_is_named(
        daemon_factory, ollama_standin_factory, wait_for):
    foreign = ollama_standin_factory()   # on a free port from the OS, which we then fix
    daemon = daemon_factory({"ollama": {"url": foreign.url}}, ready=False)
    with daemon.client(timeout=5.0) as client:
        wait_for(lambda: _state(client) == "FATAL", 20, "FATAL")
        status, health = client.status()["ollama"], client.health()
        with pytest.raises(OllamadError) as error:
            client.generate("this must not reach the foreign server", timeout=5.0)
    assert error.value.code.value == "unavailable"
    assert f"pid {foreign.pid} (" in status["fatal_reason"], status["fatal_reason"]
    assert "set ollama.url to port 0" in status["fatal_reason"]
    assert any(f"pid {foreign.pid} (" in reason for reason in health["reasons"]), health
    # Our own probes may have said GET / to it; nothing else reached it.
    requests_seen = foreign.state()["stats"]["requests"]
    assert set(requests_seen) <= {"GET /"}, requests_seen


def test_after_kill_9_of_the_daemon_the_next_one_stops_the_old_tree(daemon_factory, reaper,
                                                                     wait_for):
    daemon = daemon_factory()
    with daemon.client(timeout=5.0) as client:
        # The runner is in the record once a probe round has seen it.
        status = wait_for(lambda: (s := client.status()["ollama"])["process"]
                          and s["process"]["runners"] and s, 10, "the runner")
    record = daemon.directory / RECORD_NAME
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert json.loads(record.read_text())["server"]["pid"] == status["pid"]
    old_tree = [psutil.Process(status["pid"])] + [psutil.Process(r["pid"])
                                                   for r in status["process"]["runners"]]
    reaper.track(*(p.pid for p in old_tree))

    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert any(running(p) for p in old_tree), "nothing of the old tree outlived its daemon"
    daemon.start()   # the same config, so the same runtime directory
    status = daemon.wait_ready()["ollama"]
    reaper.track(status["pid"])
    assert not [p for p in old_tree if running(p)]
    assert "names the Ollama of a previous ollamad" in daemon.log()
    with daemon.client(timeout=10.0) as client:
        assert client.generate("served by the new Ollama")["text"]
    assert json.loads(record.read_text())["server"]["pid"] == status["pid"]

    assert daemon.stop() == 0
    assert not record.exists()   # a clean stop leaves no record behind


def test_a_recorded_pid_that_is_now_another_process_is_left_alone(daemon_factory, reaper,
                                                                   short_tmp):
    bystanders = [reaper.python("-c", "import time; time.sleep(60)") for _ in range(2)]
    created = [psutil.Process(b.pid).create_time() for b in bystanders]
    runtime_dir = short_tmp / "run"
    runtime_dir.mkdir()
    # Their pids, with other create times: as if the recorded processes were long gone and
    # their pids reused.
    (runtime_dir / RECORD_NAME).write_text(json.dumps({
        "daemon": {"pid": bystanders[0].pid, "create_time": created[0] - 9.0},
        "server": {"pid": bystanders[0].pid, "create_time": created[0] - 5.0},
        "descendants": [{"pid": bystanders[1].pid, "create_time": created[1] - 3.0}]}))
    daemon = daemon_factory({"runtime_dir": str(runtime_dir)})
    assert [b.poll() for b in bystanders] == [None, None]
    log = daemon.log()
    for bystander in bystanders:
        assert (f"[{bystander.pid}] gone, its pid now another process's (create time "
                "differs): left alone") in log
