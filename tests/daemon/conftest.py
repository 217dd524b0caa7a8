"""A real `ollamad serve --stand-in` process per test, and ways to poke it.

The daemon spawns the stand-in as its own child (a separate session), so
teardown asks the daemon for its Ollama pid early and the reaper kills both
trees whatever happens.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from ollamad.config import toml_value
from ollamad_client import Client, OllamaClient

#: Settings that keep tests fast; each test may override any of them.
TEST_CONFIG: dict[str, Any] = {
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
    "attempt_timeout": 5.0,
    "shutdown_grace": 3.0,
    "ollama": {"stand_in": True, "url": "http://127.0.0.1:0", "probe_interval": 0.5,
               "startup_timeout": 15.0, "stop_grace": 3.0, "warm_model": True},
    "gpu": {"poll_interval": 0.5},
}


def _toml(values: dict[str, Any], section: str | None = None) -> str:
    lines = [f"[{section}]"] if section else []
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for k, v in values.items():
        if isinstance(v, dict):
            name = k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_value(k)
            lines.append(_toml(v, f"{section}.{name}" if section else name))
    return "\n".join(lines) + "\n"


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merged(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


class DaemonUnderTest:
    def __init__(self, reaper, directory: Path, config: dict[str, Any],
                 env: dict[str, str] | None, args: list[str]):
        self.reaper = reaper
        self.directory = directory
        self.config_path = directory / "ollamad.toml"
        self.config = merged(TEST_CONFIG, {"socket": f"ipc://{directory}/ollamad.sock", **config})
        self.socket = self.config["socket"]
        self.config_path.write_text(_toml(self.config))
        self.log_path = directory / "daemon.log"
        self.env = {**os.environ, "OLLAMAD_CONFIG": str(self.config_path),
                    "PYTHONUNBUFFERED": "1", "OLLAMAD_STANDIN_TOKEN_DELAY": "0",
                    "OLLAMAD_STANDIN_LOAD_TIME": "0", "OLLAMAD_STANDIN_STARTUP_DELAY": "0",
                    **(env or {})}
        self.env.pop("OLLAMAD_SOCKET", None)
        self.args = args
        self.process: subprocess.Popen | None = None

    def start(self, open_files: int | None = None) -> "DaemonUnderTest":
        """``open_files``: the daemon's open-file limit, soft and hard (as LimitNOFILE= sets)."""
        log = open(self.log_path, "ab")
        limit = None if open_files is None else \
            (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files)))
        self.process = self.reaper.python("-m", "ollamad", "serve", *self.args, env=self.env,
                                          stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
        log.close()
        return self

    def wait_bound(self, timeout: float = 20.0) -> str:
        """The endpoint the daemon bound (for a tcp port chosen by the OS)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"serving on (\S+) with", self.log())
            if match:
                self.socket = match.group(1)
                return self.socket
            time.sleep(0.05)
        pytest.fail(f"daemon did not bind in {timeout} s:\n{self.log()}")

    def client(self, **kwargs) -> Client:
        return Client(self.socket, **kwargs)

    def legacy(self, **kwargs) -> OllamaClient:
        return OllamaClient(socket=self.socket, **kwargs)

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the daemon answers and Ollama is RUNNING; returns status."""
        deadline = time.monotonic() + timeout
        last: Any = None
        with self.client(timeout=2.0, connect_timeout=0.5) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    pytest.fail(f"daemon exited with {self.process.returncode}:\n{self.log()}")
                try:
                    last = client.status()
                    self.reaper.track(last["ollama"].get("pid"))
                    warm = self.config["ollama"].get("warm_model", True)
                    # With warm-up on, ready means the model is loaded too, so
                    # that the warm-up request does not overlap the test's own.
                    if last["ollama"]["state"] == "RUNNING" and (last["ollama"]["models"] or not warm):
                        return last
                except Exception as exc:  # not up yet
                    last = exc
                time.sleep(0.01)
        pytest.fail(f"daemon not ready in {timeout} s (last: {last!r}):\n{self.log()}")

    @property
    def ollama_url(self) -> str:
        with self.client(timeout=5.0) as client:
            return client.status()["ollama"]["url"]

    def standin(self, method: str, path: str, **kwargs) -> Any:
        """Call the stand-in's control endpoint (faults, state)."""
        response = requests.request(method, self.ollama_url + path, timeout=5, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def quiesce(self, timeout: float = 15.0) -> None:
        """Wait for the start-up probe round to end and Ollama to be idle; zero its counters.

        The first full probe round (with its one-token inference probe) runs
        right after the warm-up whatever ``probe_interval`` says: a test that
        counts generations must not count it. With a long ``probe_interval``
        no other probe generation follows during the test.
        """
        deadline = time.monotonic() + timeout
        warm = self.config["ollama"].get("warm_model", True)
        with self.client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                probe = client.status()["ollama"].get("last_probe") or {}
                probed = "inference_ms" in probe or not warm
                if probed and not self.standin_state()["stats"]["generations_in_flight"]:
                    self.standin("POST", "/_standin/stats/reset")
                    return
                time.sleep(0.01)
        pytest.fail(f"Ollama did not go quiet in {timeout} s:\n{self.log()}")

    def sent(self, text: str) -> dict[str, Any]:
        """The last body Ollama received whose prompt, or last message, is ``text``.

        Probes keep reaching Ollama during a test, so "the last request" is
        not necessarily the test's own.
        """
        for body in reversed(self.standin_state()["recent_requests"]):
            if not isinstance(body, dict):
                continue
            messages = body.get("messages") or [{}]
            if text in (body.get("prompt"), messages[-1].get("content")):
                return body
        pytest.fail(f"Ollama received no request for {text!r}")

    def set_fault(self, kind: str, count: int | None = None, **params: Any) -> None:
        self.standin("POST", "/_standin/faults", json={"kind": kind, "count": count, **params})

    def standin_state(self) -> dict[str, Any]:
        return self.standin("GET", "/_standin/state")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def short_tmp():
    # ipc paths must fit in sun_path (108 bytes): pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="od-") as directory:
        yield Path(directory)


@pytest.fixture
def daemon_factory(reaper, short_tmp):
    made: list[DaemonUnderTest] = []

    def make(config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
             args: list[str] | None = None, ready: bool = True, name: str = "d", *,
             open_files: int | None = None,
             launch: Callable[[DaemonUnderTest], subprocess.Popen] | None = None
             ) -> DaemonUnderTest:
        """``launch``: starts the daemon process itself (in a namespace, with descriptors)."""
        directory = short_tmp / f"{name}{len(made)}"
        directory.mkdir()
        daemon = DaemonUnderTest(reaper, directory, config or {}, env, args or [])
        if launch is None:
            daemon.start(open_files)
        else:
            daemon.process = launch(daemon)
        made.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    yield make
    for daemon in made:
        if daemon.process and daemon.process.poll() is None:
            try:
                daemon.stop(timeout=15)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def crash_looping(daemon_factory, short_tmp):
    """``make(max_restarts)``: a daemon whose Ollama exits 3 at once, every time (FATAL soon)."""
    def make(max_restarts: int) -> DaemonUnderTest:
        script = short_tmp / "crash.py"
        script.write_text("import sys\nsys.stderr.write('boom\\n')\nsys.exit(3)\n")
        return daemon_factory({"ollama": {
            "stand_in": False, "command": f"{sys.executable} {script}",
            "max_restarts": max_restarts, "restart_window": 60.0,
            "restart_backoff_initial": 0.05, "restart_backoff_max": 0.1}}, ready=False)
    return make


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


@pytest.fixture(scope="module")
def module_daemon_factory(module_reaper):
    """``make(config, env)``: a daemon shared by a module's tests, stopped at its end."""
    made: list[DaemonUnderTest] = []
    with tempfile.TemporaryDirectory(prefix="od-") as directory:
        def make(config: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> DaemonUnderTest:
            where = Path(directory) / f"m{len(made)}"
            where.mkdir()
            daemon = DaemonUnderTest(module_reaper, where, config or {}, env, []).start()
            made.append(daemon)
            daemon.wait_ready()
            return daemon
        try:
            yield make
        finally:
            for daemon in made:
                try:
                    daemon.stop(timeout=15)
                except subprocess.TimeoutExpired:
                    pass


@pytest.fixture(scope="module")
def shared_daemon(module_daemon_factory):
    """One default daemon for a module's read-only tests: those that set no fault, restart
    nothing and count no requests of Ollama's (each daemon costs ~0.7 s to start)."""
    return module_daemon_factory()
