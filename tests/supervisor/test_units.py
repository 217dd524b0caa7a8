"""The supervisor's pieces on their own: states, restart policy, hang rule, command and env."""

from __future__ import annotations

import socket
import sys
from collections import namedtuple

import pytest

from ollamad.config import Config, ConfigError, OllamaSettings, load
from ollamad.supervisor import State, SupervisorError, probes
from ollamad.supervisor.listeners import takes_connections
from ollamad.supervisor.policy import RestartPolicy
from ollamad.supervisor.probes import ProbeResult, is_hung
from ollamad.supervisor.process import (check_command, child_env, command_argv, connect_url,
                                        describe_exit, listen_address, listening_port)
from ollamad.supervisor.states import TRANSITIONS, InvalidTransition, check_transition

Address = namedtuple("Address", "ip port")   # as psutil reports a socket's laddr


def test_every_state_can_reach_stopped_and_running_only_from_starting():
    for state in State:
        reachable, todo = set(), [state]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in reachable:
                    reachable.add(nxt)
                    todo.append(nxt)
        assert State.STOPPED in reachable or state is State.STOPPED
    assert [s for s in State if State.RUNNING in TRANSITIONS[s]] == [State.STARTING]


def test_forbidden_transition_raises():
    check_transition(State.RUNNING, State.EXITED)
    with pytest.raises(InvalidTransition):
        check_transition(State.FATAL, State.RUNNING)


def test_policy_first_restart_immediate_then_exponential_then_fatal():
    policy = RestartPolicy(OllamaSettings(restart_backoff_initial=1.0, restart_backoff_max=4.0,
                                          max_restarts=5, restart_window=300.0))
    delays = [policy.record_failure(float(t), "exit code 3") for t in range(6)]
    assert [v.delay for v in delays[:5]] == [0.0, 1.0, 2.0, 4.0, 4.0]
    assert all(v.fatal is None for v in delays[:5])
    assert delays[5].fatal == "failed 6 times in 300 s; last: exit code 3"


def test_policy_forgets_failures_outside_the_window():
    policy = RestartPolicy(OllamaSettings(max_restarts=1, restart_window=10.0))
    assert policy.record_failure(0.0, "x").fatal is None
    assert policy.record_failure(10.5, "x").fatal is None
    assert policy.failures_in_window(10.5) == 1
    policy.reset()
    assert policy.failures_in_window(11.0) == 0


@pytest.mark.parametrize("in_flight, idle, hung", [
    (0, None, True),      # nothing in flight: a timed-out probe means hung
    (2, 0.1, False),      # progressing: never hung, however slow the probe
    (2, 5.0, True),       # in flight but stalled longer than hang_after
    (2, None, True),      # in flight and nothing known to have progressed
])
def test_hang_rule(in_flight, idle, hung):
    assert is_hung(ProbeResult.timeout(0.5), in_flight, idle, hang_after=1.0) is hung


def test_hang_rule_needs_a_timeout_not_an_error_answer():
    refused = ProbeResult(False, 1.0, "HTTP 404: model 'x' not found")
    assert not is_hung(refused, 0, None, 1.0)
    assert not is_hung(ProbeResult(True, 1.0), 0, None, 1.0)


def test_probe_of_a_closed_port_fails_fast_without_timing_out():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]   # bound, not listening: connections are refused
        result = probes.alive(f"http://127.0.0.1:{port}", timeout=2.0)
    assert not result.ok and not result.timed_out
    assert "Connection refused" in result.error


def test_urls_and_listen_address():
    assert listen_address("http://127.0.0.1:0") == "127.0.0.1:0"
    assert listen_address("http://[::1]:11434") == "[::1]:11434"
    assert connect_url("http://127.0.0.1:0") is None
    assert connect_url("http://127.0.0.1:0", 4321) == "http://127.0.0.1:4321"
    assert connect_url("http://0.0.0.0:11434") == "http://127.0.0.1:11434"


@pytest.mark.parametrize("address, port", [
    ("[::1]:40123", 40123), ("[::]:11434", 11434), ("127.0.0.1:40123", 40123),
    ("0.0.0.0:8", 8)])
def test_listening_line_gives_the_port_for_ipv4_and_ipv6(address, port):
    line = (f'time=2025-06-01T10:00:00.000Z level=INFO source=routes.go:1331 '
            f'msg="Listening on {address} (version 0.33.0)"')
    assert listening_port(line) == port
    assert listening_port(f"Listening on {address} (version 0.33.0)") == port
    assert listening_port("time=... level=INFO source=routes.go:1331 msg=\"inference compute\"") \
        is None


@pytest.mark.parametrize("listening, host, takes", [
    ("127.0.0.1", "127.0.0.1", True), ("0.0.0.0", "127.0.0.1", True),
    ("::", "127.0.0.1", True),         # Go's [::] is dual-stack
    ("::", "::1", True), ("::1", "::1", True), ("0.0.0.0", "::1", False),
    ("127.0.0.1", "::1", False), ("::1", "127.0.0.1", False), ("10.0.0.1", "127.0.0.1", False),
    ("127.0.0.1", "localhost", True)])  # a name: any address may be it
def test_which_listening_socket_takes_connections_to_the_url(listening, host, takes):
    assert takes_connections(Address(listening, 11434), host, 11434) is takes
    assert not takes_connections(Address(listening, 11435), host, 11434)


def test_child_env_is_scrubbed_and_sets_ollamas_shape():
    config = Config(workers=8, ollama=OllamaSettings(url="http://127.0.0.1:5000"))
    env = child_env(config, {"PATH": "/bin", "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1",
                             "WATCHDOG_PID": "2", "LISTEN_FDS": "1", "LISTEN_PID": "3"})
    # A slot per worker and one for the probe; the context and load limit from the config.
    assert env == {"PATH": "/bin", "OLLAMA_HOST": "127.0.0.1:5000", "OLLAMA_NUM_PARALLEL": "9",
                   "OLLAMA_CONTEXT_LENGTH": "4096", "OLLAMA_LOAD_TIMEOUT": "300s"}
    # The daemon owns the shape: the environment's own values do not leak through.
    inherited = child_env(config, {"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_CONTEXT_LENGTH": "131072"})
    assert inherited["OLLAMA_NUM_PARALLEL"] == "9" and inherited["OLLAMA_CONTEXT_LENGTH"] == "4096"
    config = config.replace(ollama=OllamaSettings(num_parallel=3, context_length=0,
                                                  load_timeout=12.5))
    env = child_env(config, {"OLLAMA_CONTEXT_LENGTH": "131072"})
    assert env["OLLAMA_NUM_PARALLEL"] == "3" and env["OLLAMA_LOAD_TIMEOUT"] == "12.5s"
    assert "OLLAMA_CONTEXT_LENGTH" not in env   # 0: Ollama sizes it


def test_stand_in_command_runs_this_python():
    argv = command_argv(OllamaSettings(stand_in=True))
    assert argv == [sys.executable, "-m", "ollamad", "stand-in"]


def test_check_command_names_both_remedies(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SupervisorError) as error:
        check_command(OllamaSettings(command="ollama serve"))
    message = str(error.value)
    assert "'ollama' was not found on PATH" in message
    assert "https://ollama.com/download" in message and "ollamad serve --stand-in" in message
    check_command(OllamaSettings(stand_in=True))     # the stand-in needs no ollama
    check_command(OllamaSettings(command=f"{sys.executable} -c pass"))


def test_check_command_rejects_a_missing_restart_command():
    with pytest.raises(SupervisorError, match="restart_command"):
        check_command(OllamaSettings(mode="external", restart_command="/no/such/ollama-restart"))
    check_command(OllamaSettings(mode="external"))


def test_describe_exit():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"


def test_child_env_passes_only_the_allowlist_and_what_the_config_adds():
    environ = {"PATH": "/bin", "HOME": "/var/lib/ollamad", "TZ": "UTC", "OLLAMA_DEBUG": "1",
               "CUDA_VISIBLE_DEVICES": "0", "HIP_VISIBLE_DEVICES": "0", "LC_ALL": "C",
               "AWS_SECRET_ACCESS_KEY": "x", "HF_TOKEN": "x", "CREDENTIALS_DIRECTORY": "/c",
               "PYTHONPATH": "/p", "OLLAMAD_STANDIN_TOKEN_DELAY": "0", "OLLAMAD_WORKERS": "2",
               "HF_HOME": "/hf", "MY_CA_FILE": "/ca", "MY_CAT": "no"}
    kept = {"PATH", "HOME", "TZ", "OLLAMA_DEBUG", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
            "LC_ALL"}
    ollama = Config(ollama=OllamaSettings(url="http://127.0.0.1:5000"))
    assert set(child_env(ollama, environ)) - set(DAEMON_SET) == kept
    # The stand-in is a Python program with settings of its own; Ollama gets neither.
    stand_in = ollama.replace(ollama=OllamaSettings(stand_in=True))
    assert set(child_env(stand_in, environ)) - set(DAEMON_SET) == \
        kept | {"PYTHONPATH", "OLLAMAD_STANDIN_TOKEN_DELAY"}
    extra = ollama.replace(ollama=OllamaSettings(pass_environment=("HF_HOME", "MY_CA_*")))
    assert set(child_env(extra, environ)) - set(DAEMON_SET) == kept | {"HF_HOME", "MY_CA_FILE"}


DAEMON_SET = ("OLLAMA_HOST", "OLLAMA_NUM_PARALLEL", "OLLAMA_LOAD_TIMEOUT", "OLLAMA_CONTEXT_LENGTH")


@pytest.mark.parametrize("entry", ["", "HF HOME", "*", "A*B", "1ABC", "HF_*_X"])
def test_pass_environment_refuses_what_is_not_a_name_or_prefix(entry, tmp_path):
    path = tmp_path / "ollamad.toml"
    path.write_text(f'[ollama]\npass_environment = ["{entry}"]\n')
    with pytest.raises(ConfigError, match="ollama.pass_environment"):
        load(str(path), env={})
