"""A server that cannot stay up: back-off, FATAL with the reason, and the ways out of FATAL."""

from __future__ import annotations

import shlex
import sys
import time

from ollamad.supervisor import State

EXIT_3 = shlex.join([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_crash_loop_backs_off_then_goes_fatal_and_restart_leaves_fatal(supervise, make_config,
                                                                       wait_for):
    config = make_config(stand_in=False, command=EXIT_3, max_restarts=3)
    supervisor, system, states = supervise(config)
    assert not supervisor.wait_running(time.monotonic() + 20)   # returns False at FATAL
    assert supervisor.state is State.FATAL
    snap = supervisor.snapshot()
    assert snap["fatal_reason"] == "failed 4 times in 60 s; last: exit code 3"
    assert snap["last_exit"]["code"] == 3
    assert snap["restarts"] == 3 and snap["restarts_in_window"] == 4
    assert State.BACKOFF.value in states
    assert len(system.spawned) == 4

    supervisor.request_restart("operator")
    wait_for(lambda: len(system.spawned) > 4, 10, "a start after the restart request")
    wait_for(lambda: supervisor.state is State.FATAL, 20, "FATAL again")
    assert len(system.spawned) == 8


def test_reload_leaves_fatal(supervise, make_config, wait_for):
    config = make_config(stand_in=False, command=EXIT_3, max_restarts=1)
    supervisor, system, _ = supervise(config)
    wait_for(lambda: supervisor.state is State.FATAL, 20, "FATAL")
    spawned = len(system.spawned)
    assert supervisor.reconfigure(config.replace(workers=config.workers)) == []
    wait_for(lambda: len(system.spawned) > spawned, 10, "a start after the reload")


def test_missing_command_is_fatal_at_once_with_both_remedies(supervise, monkeypatch, make_config,
                                                             wait_for):
    monkeypatch.setenv("PATH", "/nonexistent")
    supervisor, system, _ = supervise(make_config(stand_in=False, command="ollama serve"))
    wait_for(lambda: supervisor.state is State.FATAL, 10, "FATAL")
    reason = supervisor.snapshot()["fatal_reason"]
    assert "'ollama' was not found on PATH" in reason and "--stand-in" in reason
    assert system.spawned == []
