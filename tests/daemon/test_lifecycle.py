"""The daemon as a process: its socket, start-up errors, signals, shutdown, reload."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import psutil
import pytest

from ollamad.configspec import ConfigError
from ollamad.serving.router import socket_group_id
from ollamad_client import OllamadError


def test_socket_mode_lets_owner_and_group_connect_and_nobody_else(daemon):
    mode = stat.S_IMODE(os.stat(daemon.socket[len("ipc://"):]).st_mode)
    assert mode == 0o660


def connect_without_file_capabilities(endpoint: str, groups: list[int]) -> subprocess.CompletedProcess:
    """A client run as root without the capabilities that bypass file permissions and
    with exactly `groups` as its groups (root can still read the test's venv)."""
    group_args = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return subprocess.run(
        ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
         *group_args, sys.executable, "-m", "ollamad", "status", "--socket",
         endpoint, "--timeout", "2"], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run a client in chosen groups")
def test_socket_group_is_the_group_that_may_connect(daemon_factory):
    group = grp.getgrgid(65534).gr_name      # nogroup: a group no test process is in
    daemon = daemon_factory({"socket_group": group})
    path = daemon.socket[len("ipc://"):]
    info = os.stat(path)
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 0o660)
    # The owner's bits no longer apply to root once the file is nobody's.
    os.chown(path, 65534, -1)
    member = connect_without_file_capabilities(daemon.socket, [65534])
    assert member.returncode == 0 and "serving" in member.stdout, member.stderr
    outsider = connect_without_file_capabilities(daemon.socket, [])
    assert outsider.returncode == 1 and f"group {group!r}" in outsider.stderr, outsider.stderr


def test_an_unknown_socket_group_is_a_config_error(reaper, short_tmp):
    config = short_tmp / "ollamad.toml"
    config.write_text('socket_group = "no-such-group-here"\n[ollama]\nstand_in = true\n')
    proc = reaper.python("-m", "ollamad", "serve", "--config", str(config), "--socket",
                         f"ipc://{short_tmp}/s.sock", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 78, err
    assert b"socket_group: there is no group 'no-such-group-here'" in err
    assert not os.path.exists(short_tmp / "s.sock")


def test_a_socket_group_the_daemon_is_not_in_is_a_config_error(monkeypatch):
    group = grp.getgrgid(65534).gr_name
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 1000)
    monkeypatch.setattr(os, "getgroups", lambda: [1000, 44])
    with pytest.raises(ConfigError, match=f"not a member of group '{group}'.*SupplementaryGroups="):
        socket_group_id(group)
    monkeypatch.setattr(os, "getgroups", lambda: [1000, 65534])
    assert socket_group_id(group) == 65534
    assert socket_group_id("") is None


def test_a_second_daemon_on_the_same_socket_refuses_and_says_why(daemon, reaper):
    second = reaper.python("-m", "ollamad", "serve", env=daemon.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = second.communicate(timeout=20)
    assert second.returncode == 1
    assert b"another ollamad (pid" in err and b"is already serving" in err
    with daemon.client() as client:  # the first one is untouched
        assert client.ping()["pid"] == daemon.process.pid


def test_a_stale_socket_is_taken_over(daemon_factory, short_tmp):
    stale_dir = short_tmp / "stale"
    stale_dir.mkdir()
    path = stale_dir / "ollamad.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))
    leftover.close()  # the file stays, as after a crash
    daemon = daemon_factory({"socket": f"ipc://{path}"})
    assert "taking over stale socket" in daemon.log()


def test_without_ollama_and_without_stand_in_startup_names_both_remedies(reaper, short_tmp):
    env = {**os.environ, "PATH": str(short_tmp), "OLLAMAD_CONFIG": os.devnull}
    proc = reaper.python("-m", "ollamad", "serve", "--socket", f"ipc://{short_tmp}/s.sock",
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 78
    assert b"ollama" in err and b"--stand-in" in err and b"https://ollama.com" in err


def test_a_config_error_names_the_key(reaper, short_tmp):
    config = short_tmp / "bad.toml"
    config.write_text("wokers = 3\n")
    proc = reaper.python("-m", "ollamad", "serve", "--config", str(config),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 78 and b"wokers: unknown key" in err


def ollama_tree(daemon) -> list[psutil.Process]:
    pid = daemon.wait_ready()["ollama"]["pid"]
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_sigterm_exits_zero_and_leaves_no_process(daemon):
    with daemon.client() as client:
        client.generate("load the model so a runner exists")
    tree = ollama_tree(daemon)
    assert len(tree) >= 2, "the stand-in should have a runner"
    assert daemon.stop(signal.SIGTERM) == 0
    gone, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive
    assert not os.path.exists(daemon.socket[len("ipc://"):])


def test_shutdown_answers_queued_requests_and_lets_in_flight_ones_finish(daemon_factory, wait_for):
    daemon = daemon_factory({"workers": 1, "shutdown_grace": 5.0},
                            env={"OLLAMAD_STANDIN_TOKEN_DELAY": "0.05"})
    outcomes: dict[str, object] = {}

    def call(name: str, prompt: str):
        with daemon.client(timeout=30.0) as client:
            try:
                outcomes[name] = client.generate(prompt, max_tokens=20)
            except OllamadError as exc:
                outcomes[name] = exc

    first = threading.Thread(target=call, args=("in_flight", "first"))
    first.start()
    wait_for(lambda: daemon.standin_state()["stats"]["generations_in_flight"], 10,
             "the first request to reach Ollama")
    second = threading.Thread(target=call, args=("queued", "second"))
    second.start()
    with daemon.client() as client:
        wait_for(lambda: client.status()["daemon"]["queue_depth"], 10, "the second to queue")
    assert daemon.stop(signal.SIGTERM) == 0
    first.join(10)
    second.join(10)
    assert isinstance(outcomes["in_flight"], dict) and outcomes["in_flight"]["text"]
    assert isinstance(outcomes["queued"], OllamadError)
    assert outcomes["queued"].code.value == "shutting_down"


def test_daemon_killed_while_a_client_waits(daemon_factory, short_tmp, wait_for):
    daemon = daemon_factory()
    daemon.set_fault("hang")
    client = daemon.client(timeout=30.0)
    result: dict[str, object] = {}

    def call():
        started = time.monotonic()
        try:
            client.generate("never answered")
        except OllamadError as exc:
            result["error"] = exc
        result["elapsed"] = time.monotonic() - started

    waiter = threading.Thread(target=call)
    waiter.start()
    wait_for(lambda: daemon.standin_state()["stats"]["generations_in_flight"], 10,
             "the request to reach Ollama")
    killed_at = time.monotonic()
    daemon.process.kill()
    waiter.join(15)
    assert not waiter.is_alive()
    assert result["error"].code.value == "unavailable"
    assert time.monotonic() - killed_at < 5.0
    # Same socket path, same client object: it works, and sees no stale reply.
    again = daemon_factory({"socket": daemon.socket})
    assert client.generate("fresh")["text"]
    assert client.ping()["pid"] == again.process.pid
    client.close()


def test_sighup_reloads_live_settings_and_names_what_needs_a_restart(daemon, wait_for):
    text = daemon.config_path.read_text()
    daemon.config_path.write_text("workers = 3\n" + text)
    os.kill(daemon.process.pid, signal.SIGHUP)
    wait_for(lambda: "reload" in daemon.log(), 10, "the reload")
    assert "these changes apply at the daemon's next start: workers" in daemon.log()
    with daemon.client() as client:
        assert client.generate("still serving")["text"]
        assert client.status()["daemon"]["workers"] == 8


def test_a_broken_config_on_reload_keeps_the_running_one(daemon, wait_for):
    daemon.config_path.write_text("workers = 'many'\n")
    os.kill(daemon.process.pid, signal.SIGHUP)
    wait_for(lambda: "reload failed" in daemon.log(), 10, "the failed reload")
    with daemon.client() as client:
        assert client.generate("still serving")["text"]


def test_operator_commands(daemon):
    env = {**os.environ, "OLLAMAD_SOCKET": daemon.socket}
    run = lambda *args: subprocess.run([sys.executable, "-m", "ollamad", *args], env=env,
                                       capture_output=True, text=True, timeout=30)
    status = run("status")
    assert status.returncode == 0 and "RUNNING" in status.stdout and "No GPU" not in status.stdout
    health = run("health")
    assert health.returncode == 0 and health.stdout.startswith("HEALTHY")
    generate = run("generate", "hello there", "--max-tokens", "8")
    assert generate.returncode == 0 and generate.stdout.strip() and "tokens/s" in generate.stderr
    assert run("metrics", "--json").returncode == 0
    gpu = run("gpu")
    assert gpu.returncode == 0 and gpu.stdout.startswith("No GPU")
    down = subprocess.run([sys.executable, "-m", "ollamad", "health", "--socket",
                           daemon.socket + ".nothing"], capture_output=True, text=True, timeout=30)
    assert down.returncode != 0 and "unavailable" in down.stderr
