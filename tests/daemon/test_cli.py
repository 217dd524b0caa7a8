"""What an operator sees from the CLI: clear errors with the remedy, human times, health exit
codes in the monitoring-plugin convention, restart --wait, generate -, and top in a terminal."""

from __future__ import annotations

import grp
import json
import os
import pty
import pwd
import re
import select
import shutil
import subprocess
import sys
import time

import pytest


def ollamad(*args: str, stdin: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ollamad", *args], input=stdin,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("endpoint, hint", [
    ("banana", "use ipc:///PATH/TO/SOCKET or tcp://HOST:PORT"),
    ("/tmp/nope.sock", "did you mean ipc:///tmp/nope.sock?"),
    ("tcp://localhost", "use ipc:///PATH/TO/SOCKET or tcp://HOST:PORT"),
])
def test_a_socket_that_is_no_endpoint_is_named_with_what_it_should_be(endpoint, hint):
    out = ollamad("status", "--socket", endpoint)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"'{endpoint}' is not an ollamad endpoint" in out.stderr and hint in out.stderr
    assert ollamad("health", "--socket", endpoint).returncode == 3   # health: UNKNOWN


def test_a_list_of_endpoints_is_for_clients_not_the_cli(short_tmp):
    listed = f"ipc://{short_tmp}/a.sock,ipc://{short_tmp}/b.sock"
    out = ollamad("status", "--socket", listed)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "names several endpoints: name one" in out.stderr


def test_no_daemon_at_the_socket_says_so_and_health_is_unknown(short_tmp):
    out = ollamad("health", "--socket", f"ipc://{short_tmp}/absent.sock")
    assert out.returncode == 3
    assert f"not reachable at ipc://{short_tmp}/absent.sock: there is no socket file" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to drop the capabilities that bypass "
                           "file permissions")
def test_a_user_outside_the_sockets_group_is_told_the_group_and_the_remedy(shared_daemon):
    # The CLI runs as root without CAP_DAC_OVERRIDE (so it can still read the test's
    # venv) against a socket owned by nobody:nogroup: to it, a socket of another group.
    path = shared_daemon.socket[len("ipc://"):]
    os.chown(path, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
    try:
        out = subprocess.run(
            ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
             sys.executable, "-m", "ollamad", "status", "--socket", shared_daemon.socket,
             "--timeout", "2"], capture_output=True, text=True, timeout=60)
    finally:
        os.chown(path, 0, 0)
    assert out.returncode == 1, out.stderr
    assert "permission denied on" in out.stderr and "group 'nogroup'" in out.stderr
    assert "usermod -aG nogroup" in out.stderr and "newgrp nogroup" in out.stderr
    assert "no connection within" not in out.stderr


def test_status_reads_like_times_people_read(shared_daemon):
    out = ollamad("status", "--socket", shared_daemon.socket)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^ollamad +serving \(pid \d+, version \S+, up (\d+(\.\d)? s|\d+ min)",
                     out.stdout, re.M), out.stdout
    assert re.search(r"^ollama up +\d", out.stdout, re.M) and not re.search(r"^uptime", out.stdout,
                                                                              re.M)
    assert re.search(r"^ollama +RUNNING \(spawn mode, version 0\.33\.0\)$", out.stdout, re.M)
    # The loaded model as `ollama ps` shows it: where it runs, and until when.
    assert re.search(r"llama3\.1:8b .* 100% GPU +4096 +in (29|30) min", out.stdout), out.stdout


def test_models_shows_where_a_loaded_model_runs_and_until_when(shared_daemon):
    out = ollamad("models", "--socket", shared_daemon.socket)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^llama3\.1:8b .* 100% GPU +in (29|30) min( \d+ s)?$", out.stdout, re.M), \
        out.stdout
    assert re.search(r"^qwen3:0\.6b .* no +-$", out.stdout, re.M), out.stdout


def test_the_human_metrics_name_retries_busy_and_errors_by_code(shared_daemon):
    ollamad("generate", "x", "--model", "absent-model", "--socket", shared_daemon.socket)
    out = ollamad("metrics", "--socket", shared_daemon.socket)
    assert re.search(r"^retried +\d+ requests needed more than one attempt$", out.stdout, re.M)
    assert re.search(r"^busy +\d+ refused", out.stdout, re.M)
    assert re.search(r"^errors +.*model_not_found \d+", out.stdout, re.M), out.stdout


def test_generate_reads_the_prompt_from_standard_input(shared_daemon):
    out = ollamad("generate", "-", "--json", "--socket", shared_daemon.socket,
                  stdin="a prompt from a pipe")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["text"]
    assert shared_daemon.sent("a prompt from a pipe")


def test_restart_wait_follows_it_to_running_and_json_is_json(daemon):
    old_pid = daemon.client().status()["ollama"]["pid"]
    out = ollamad("restart", "--wait", "--reason", "cli test", "--socket", daemon.socket)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "ollama RUNNING" and len(lines) >= 2, out.stdout
    status = daemon.client().status()["ollama"]
    assert status["pid"] != old_pid and status["state"] == "RUNNING"
    daemon.reaper.track(status["pid"])
    answer = ollamad("restart", "--wait", "--json", "--socket", daemon.socket)
    assert answer.returncode == 0, answer.stderr
    parsed = json.loads(answer.stdout)
    assert parsed["restarted"] is True and parsed["ollama"]["state"] == "RUNNING"
    daemon.reaper.track(parsed["ollama"]["pid"])
    shown = ollamad("status", "--socket", daemon.socket)
    assert re.search(r"^last exit +(code|signal) \d+, \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC "
                     r"\(\S+ s ago\)$", shown.stdout, re.M), shown.stdout


def test_health_exit_codes_follow_the_monitoring_plugin_convention(daemon_factory, wait_for):
    # Ollama takes 8 s to start: STARTING within its start limit is a warning (1), not
    # critical; then healthy (0). The health op itself still says unhealthy: not RUNNING.
    # (8 s: two CLI start-ups on a loaded 2-core machine have taken over 4.)
    daemon = daemon_factory({"ollama": {"startup_timeout": 30.0}}, ready=False,
                            env={"OLLAMAD_STANDIN_STARTUP_DELAY": "8"})
    daemon.wait_bound()
    wait_for(lambda: daemon.client().status()["ollama"]["state"] == "STARTING", 10, "STARTING")
    starting = ollamad("health", "--socket", daemon.socket)
    assert starting.returncode == 1 and starting.stdout.startswith("STARTING"), starting.stdout
    assert "Ollama is STARTING" in starting.stdout
    assert daemon.client().health()["ollama"]["starting"] is True
    daemon.wait_ready()
    assert ollamad("health", "--socket", daemon.socket).returncode == 0


def test_fatal_says_what_to_run(crash_looping, wait_for):
    daemon = crash_looping(max_restarts=1)
    daemon.wait_bound()
    wait_for(lambda: daemon.client().status()["ollama"]["state"] == "FATAL", 20, "FATAL")
    health = ollamad("health", "--socket", daemon.socket)
    assert health.returncode == 2 and health.stdout.startswith("UNHEALTHY")
    assert "Ollama: FATAL" in health.stdout and "pid None" not in health.stdout
    assert "then run `ollamad restart`" in health.stdout
    generate = ollamad("generate", "hi", "--socket", daemon.socket)
    assert generate.returncode == 1 and "ollamad restart" in generate.stderr


def test_serving_where_the_runtime_directory_is_missing_names_the_remedy():
    out = ollamad("serve", "--stand-in", "--socket", "ipc:///nonexistent-ollamad-dir/s.sock",
                  env={"OLLAMAD_CONFIG": "/dev/null"})
    assert out.returncode == 1
    assert "directory /nonexistent-ollamad-dir does not exist" in out.stderr
    assert "install -d" in out.stderr and "--socket ipc:///tmp/ollamad.sock" in out.stderr


def test_top_shows_live_figures_in_a_terminal_and_quits_on_q(shared_daemon):
    with shared_daemon.client(app="watched") as client:
        client.generate("seen by top", max_tokens=3)
    main, secondary = pty.openpty()
    top = subprocess.Popen([sys.executable, "-m", "ollamad", "top", "--interval", "0.2",
                            "--socket", shared_daemon.socket], stdin=secondary, stdout=secondary,
                           stderr=secondary, start_new_session=True)
    os.close(secondary)
    try:
        seen = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and seen.count(b"\x1b[H\x1b[2J") < 2:
            if select.select([main], [], [], 0.5)[0]:
                seen += os.read(main, 65536)
        screen = seen.decode(errors="replace").split("\x1b[H\x1b[2J")[-1]
        assert "ollamad top" in screen and "RUNNING" in screen, screen
        assert re.search(r"^interactive +\d+ +\d+", screen, re.M), screen
        assert "root/watched" in screen and "tokens/s" in screen, screen
        os.write(main, b"q")
        assert top.wait(10) == 0
    finally:
        if top.poll() is None:
            top.kill()
            top.wait(5)
        os.close(main)


@pytest.mark.parametrize("command", ["serve", "status", "health", "top", "generate", "restart",
                                     "pull", "keygen"])
def test_every_flag_says_what_it_does(command):
    out = ollamad(command, "--help")
    assert out.returncode == 0
    options = re.findall(r"^  (-[-\w]+(?:[ ,][A-Z_{}a-z,.-]+)*)(.*)$", out.stdout, re.M)
    # A flag's help is on its own line or the next (argparse wraps long flags).
    lines = out.stdout.splitlines()
    for flag, rest in options:
        if flag.startswith("-h"):
            continue
        index = next(i for i, line in enumerate(lines) if line.startswith(f"  {flag}"))
        text = rest.strip() or lines[index + 1].strip()
        assert text and not text.startswith("-"), f"{command} {flag} has no help"


def test_keygen_makes_zeromq_certificates_with_safe_modes_and_never_overwrites(tmp_path):
    import zmq
    import zmq.auth
    from ollamad.curvekeys import load_authorized_clients, load_server_key

    where = tmp_path / "curve"
    made = ollamad("keygen", "--dir", str(where), "--owner", "nobody")
    assert made.returncode == 0, made.stderr
    public, secret = where / "server.key", where / "server.key_secret"
    assert made.stdout.strip() == zmq.auth.load_certificate(public)[0].decode()
    assert (public.stat().st_mode & 0o777, secret.stat().st_mode & 0o777) == (0o644, 0o600)
    assert secret.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert load_server_key(str(secret)).public.decode() == made.stdout.strip()
    assert f'secret_key = "{secret}"' in made.stderr
    assert load_authorized_clients(str(where / "authorized_clients")).names == {}

    again = ollamad("keygen", "--dir", str(where))
    assert again.returncode == 1 and "exist: keep them, or replace them with --force" \
        in again.stderr
    forced = ollamad("keygen", "--dir", str(where), "--force")
    assert forced.returncode == 0 and forced.stdout != made.stdout
    assert secret.stat().st_mode & 0o777 == 0o600

    client = ollamad("keygen", "--client", "alice", "--dir", str(where))
    assert client.returncode == 0, client.stderr
    line = client.stdout.strip()
    assert line == f"alice {zmq.auth.load_certificate(where / 'alice.key')[0].decode()}"
    assert (where / "alice.key_secret").stat().st_mode & 0o777 == 0o600
    with open(where / "authorized_clients", "a") as clients:
        clients.write(line + "\n")
    assert list(load_authorized_clients(str(where / "authorized_clients")).names.values()) \
        == ["alice"]
    bad = ollamad("keygen", "--client", "a:b", "--dir", str(where))
    assert bad.returncode == 1 and "'a:b' is no key name" in bad.stderr
