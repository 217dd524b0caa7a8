"""External mode: watching a stand-in we did not start. It is reported, never signalled."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ollamad.supervisor import State, SupervisorError


def external_config(make_config, standin, **settings):
    return make_config(mode="external", stand_in=False, url=standin.url, **settings)


def test_external_is_probed_and_restarted_only_by_the_restart_command(
        supervise, make_config, wait_for, ollama_standin_factory, tmp_path):
    standin = ollama_standin_factory()
    marker = tmp_path / "restarted"
    config = external_config(make_config, standin, restart_command=f"touch {marker}")
    supervisor, system, _ = supervise(config)
    assert supervisor.wait_running(time.monotonic() + 10)
    snap = wait_for(lambda: (s := supervisor.snapshot())["models"] and s["process"] and s, 10,
                    "models and the process of the external Ollama")
    assert snap["mode"] == "external" and snap["url"] == standin.url
    assert snap["pid"] == standin.pid     # found by its listening socket
    assert supervisor.ollama_pids() >= {standin.pid, *standin.runner_pids()}

    supervisor.request_restart("operator")
    wait_for(marker.exists, 10, "the restart command to run")
    assert system.commands == [["touch", str(marker)]]
    assert supervisor.wait_running(time.monotonic() + 10)
    assert supervisor.snapshot()["last_reason"] == "restart requested: operator"
    assert system.signals == [] and system.spawned == []
    assert standin.process.poll() is None


def test_external_hang_is_reported_not_acted_on(supervise, make_config, wait_for,
                                                 ollama_standin_factory):
    standin = ollama_standin_factory()
    supervisor, system, _ = supervise(external_config(make_config, standin))
    assert supervisor.wait_running(time.monotonic() + 10)
    with pytest.raises(SupervisorError, match="restart_command is not set"):
        supervisor.request_restart("operator")

    standin.set_fault("hang")
    reason = wait_for(lambda: supervisor.snapshot()["last_reason"], 10, "the hang to be seen")
    assert reason.startswith("hung: inference probe timed out")
    assert reason.endswith("not restarted (no ollama.restart_command)")
    assert supervisor.state is State.RUNNING and standin.process.poll() is None
    assert system.signals == [] and system.commands == []


def test_external_outage_and_return(supervise, make_config, wait_for, ollama_standin_factory):
    """A worker's connection failures bring probes forward: with a 30 s interval the outage is
    still seen in seconds. A reload shortens the interval at once; when Ollama answers again,
    it is RUNNING again."""
    standin = ollama_standin_factory()
    config = external_config(make_config, standin, probe_interval=30.0)
    supervisor, system, states = supervise(config)
    assert supervisor.wait_running(time.monotonic() + 10)
    port = standin.port
    standin.stop()

    def reported_and_exited():
        supervisor.report_connection_failure()
        return supervisor.state is State.EXITED
    wait_for(reported_and_exited, 6, "EXITED after three failed probes")
    assert "not answering GET / (3 probes)" in supervisor.snapshot()["last_reason"]

    again = ollama_standin_factory(env={"OLLAMA_HOST": f"127.0.0.1:{port}"})
    assert supervisor.reconfigure(external_config(make_config, standin, probe_interval=0.2)) == []
    assert supervisor.wait_running(time.monotonic() + 10)
    wait_for(lambda: supervisor.snapshot()["pid"] == again.pid, 10, "the new Ollama's pid")
    assert states[-3:] == ["EXITED", "STARTING", "RUNNING"]
    assert system.signals == [] and system.spawned == []


def test_a_stopped_external_ollama_is_reported_at_once_and_never_signalled(
        supervise, make_config, wait_for, ollama_standin_factory):
    standin = ollama_standin_factory()
    supervisor, system, _ = supervise(external_config(make_config, standin, probe_timeout=0.3))
    wait_for(lambda: supervisor.snapshot()["pid"] == standin.pid, 10, "its process")
    os.kill(standin.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: supervisor.state is State.EXITED, 5, "EXITED")
        reason = supervisor.snapshot()["last_reason"]
        assert reason == f"ollama[{standin.pid}] is stopped (SIGSTOP?)"
    finally:
        os.kill(standin.pid, signal.SIGCONT)
    assert supervisor.wait_running(time.monotonic() + 10)
    assert system.signals == [] and system.commands == []
