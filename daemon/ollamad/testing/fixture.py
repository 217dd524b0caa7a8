"""`StandIn`: run the Ollama stand-in as a real child process, and always clean it up.

    with StandIn(token_delay=0.0) as ollama:
        requests.post(ollama.url + "/api/generate", json={...}, timeout=5)
        ollama.set_fault("busy", count=2)

The server runs as `python -m ollamad stand-in` in its own session (process
group) on a port the OS picks; its log goes to a temporary file (never a pipe
nobody reads). Stopping sends SIGTERM, then SIGKILLs whatever is left of the
group, orphaned runners included: they stay in the server's group even after
the server is gone, like Ollama's.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping

import psutil

_LISTENING = re.compile(rb"Listening on (\S+):(\d+) \(version")
# Inherited settings that would make a test's stand-in differ from what it asked for.
_INHERITED_KNOBS = ("OLLAMA_HOST", "OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_QUEUE",
                    "OLLAMA_KEEP_ALIVE", "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_CONTEXT_LENGTH",
                    "OLLAMA_LOAD_TIMEOUT")
_running: "weakref.WeakSet[StandIn]" = weakref.WeakSet()


class StandInError(RuntimeError):
    """The stand-in did not start, or a control call failed."""


def _fault_spec(fault: str | Mapping[str, Any]) -> str:
    """A fault as a `--fault` spec: "busy:2" stays, {"kind": "busy", "count": 2} becomes it."""
    if isinstance(fault, str):
        return fault
    params = dict(fault)
    parts = [str(params.pop("kind"))]
    count = params.pop("count", None)
    if count is not None:
        parts.append(str(count))
    parts += [f"{name}={value}" for name, value in params.items()]
    return ":".join(parts)


def standin_environment(*, token_delay: float = 0.0, prompt_rate: float = 0.0,
                        load_time: float = 0.0, startup_delay: float = 0.0,
                        models: Iterable[str] | None = None, vram: int | None = None,
                        faults: Iterable[str | Mapping[str, Any]] = (),
                        runner_max_lifetime: float | None = None,
                        num_parallel: int | None = None, max_queue: int | None = None,
                        keep_alive: str | None = None, context_length: int | None = None,
                        load_timeout: str | None = None) -> dict[str, str]:
    """The environment variables that configure a stand-in this way.

    For a stand-in something else starts (the daemon's supervisor running
    `ollamad stand-in`): pass these in its environment. `vram` is the bytes
    of pretend GPU memory (default 24 GiB; 0 = no GPU). `num_parallel`,
    `max_queue`, `keep_alive`, `context_length` and `load_timeout` become
    Ollama's own `OLLAMA_*` variables.
    """
    env = {
        "OLLAMAD_STANDIN_TOKEN_DELAY": repr(float(token_delay)),
        "OLLAMAD_STANDIN_PROMPT_RATE": repr(float(prompt_rate)),
        "OLLAMAD_STANDIN_LOAD_TIME": repr(float(load_time)),
        "OLLAMAD_STANDIN_STARTUP_DELAY": repr(float(startup_delay)),
    }
    optional = {
        "OLLAMAD_STANDIN_MODELS": ",".join(models) if models is not None else None,
        "OLLAMAD_STANDIN_VRAM": vram,
        "OLLAMAD_STANDIN_FAULTS": ",".join(_fault_spec(f) for f in faults) or None,
        "OLLAMAD_STANDIN_RUNNER_MAX_LIFETIME": runner_max_lifetime,
        "OLLAMA_NUM_PARALLEL": num_parallel,
        "OLLAMA_MAX_QUEUE": max_queue,
        "OLLAMA_KEEP_ALIVE": keep_alive,
        "OLLAMA_CONTEXT_LENGTH": context_length,
        "OLLAMA_LOAD_TIMEOUT": load_timeout,
    }
    env.update({name: str(value) for name, value in optional.items() if value is not None})
    return env


def _gone(pid: int) -> bool:
    """True when `pid` has exited (a zombie nobody reaps counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _group_members(pgid: int) -> list[int]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and not _gone(process.pid):
                members.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


class StandIn:
    """A running `ollamad stand-in` child process; use it as a context manager.

    Attributes once started: `url` ("http://127.0.0.1:PORT"), `host`
    ("127.0.0.1:PORT", an OLLAMA_HOST value), `port`, `pid`, `process`
    (the Popen), `log_path` (its stderr); after `stop()`, `log_text`.
    `env` entries override everything, OLLAMA_HOST included.
    """

    environment = staticmethod(standin_environment)

    def __init__(self, token_delay: float = 0.0, load_time: float = 0.0,
                 startup_delay: float = 0.0, models: Iterable[str] | None = None,
                 num_parallel: int | None = None, max_queue: int | None = None,
                 vram: int | None = None,
                 faults: Iterable[str | Mapping[str, Any]] = (),
                 env: Mapping[str, str] | None = None, ready_timeout: float = 10.0, *,
                 prompt_rate: float = 0.0, keep_alive: str | None = None,
                 runner_max_lifetime: float | None = None, wait_ready: bool = True,
                 context_length: int | None = None, load_timeout: str | None = None):
        self.settings_env = standin_environment(
            token_delay=token_delay, prompt_rate=prompt_rate, load_time=load_time,
            startup_delay=startup_delay, models=models, vram=vram,
            faults=faults, runner_max_lifetime=runner_max_lifetime, num_parallel=num_parallel,
            max_queue=max_queue, keep_alive=keep_alive, context_length=context_length,
            load_timeout=load_timeout)
        self._extra_env = dict(env or {})
        # The stand-in answers nothing during its start-up delay: wait beyond it.
        self._ready_timeout = ready_timeout + startup_delay
        self._wait_ready = wait_ready
        self.process: subprocess.Popen | None = None
        self.url = self.host = self._address = ""
        self.port = 0
        self.log_path: Path | None = None
        self.log_text = ""
        self._tmpdir: str | None = None
        self._runner_pids: set[int] = set()

    def __repr__(self) -> str:
        return f"<StandIn {self.url or 'not started'} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # --- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "StandIn":
        if self.process is not None:
            raise StandInError("already started")
        self._tmpdir = tempfile.mkdtemp(prefix="ollamad-standin-")
        self.log_path = Path(self._tmpdir, "standin.log")
        env = {k: v for k, v in os.environ.items()
               if k not in _INHERITED_KNOBS and not k.startswith("OLLAMAD_STANDIN_")}
        package_root = str(Path(__file__).resolve().parents[2])  # so the child imports us
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env.update(self.settings_env)
        env["OLLAMA_HOST"] = "127.0.0.1:0"
        env.update(self._extra_env)
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ollamad", "stand-in"], env=env, cwd=self._tmpdir,
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True)
        _running.add(self)
        try:
            self._await_listening()
            if self._wait_ready:
                self._await_ready()
        except BaseException:
            self.stop(timeout=1.0)
            raise
        return self

    def _log_bytes(self) -> bytes:
        try:
            return self.log_path.read_bytes() if self.log_path else b""
        except OSError:
            return b""

    def _await_listening(self):
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self._log_bytes())
            if found:
                listening_on = found[1].decode()
                if listening_on in ("", "0.0.0.0", "[::]"):  # every interface: use loopback
                    listening_on = "127.0.0.1"
                self._address = listening_on.strip("[]")
                self.port = int(found[2])
                self.host = f"{listening_on}:{self.port}"
                self.url = f"http://{self.host}"
                return
            if self.process.poll() is not None:
                raise StandInError(f"stand-in exited with status {self.process.returncode}:\n"
                                   + self._log_bytes().decode(errors="replace"))
            time.sleep(0.01)
        raise StandInError("stand-in did not report its port in time:\n"
                           + self._log_bytes().decode(errors="replace"))

    def _await_ready(self):
        """Wait for `GET /` to answer 200 (a TCP connect alone proves nothing)."""
        deadline = time.monotonic() + self._ready_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if self.process.poll() is not None:
                raise StandInError(f"stand-in exited with status {self.process.returncode}")
            try:
                status, _ = self._http("GET", "/", timeout=min(remaining, 2.0))
                if status == 200:
                    return
            except (OSError, http.client.HTTPException):
                time.sleep(0.02)
        raise StandInError(f"stand-in at {self.url} not ready within {self._ready_timeout} s")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the server, SIGKILL what remains of its group; returns its exit status."""
        process = self.process
        if process is None:
            return None
        _running.discard(self)
        pgid = process.pid  # its own session: group id == its pid
        if not self._exited_unreaped(0.0):
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._exited_unreaped(timeout)
        # Sweep while the unreaped server still pins its group id (no pid reuse).
        self._kill_group(pgid)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self.log_text = self._log_bytes().decode(errors="replace")
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self.process = None
        return process.returncode

    def _exited_unreaped(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the server to exit, without reaping it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitid(os.P_PID, self.process.pid,
                             os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                    return True
            except ChildProcessError:
                return True  # already reaped
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _kill_group(self, pgid: int):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        leftovers = [pid for pid in self._runner_pids if not _gone(pid)]
        for pid in leftovers:
            try:
                if os.getpgid(pid) == pgid:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _group_members(pgid):
            time.sleep(0.01)

    # --- control endpoint ------------------------------------------------

    def _http(self, method: str, path: str, body: Any = None,
              timeout: float = 5.0) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self._address, self.port, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=payload)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _control(self, method: str, path: str, body: Any = None) -> dict:
        if self.process is None:
            raise StandInError("stand-in is not running")
        status, data = self._http(method, path, body)
        if status != 200:
            raise StandInError(f"{method} {path}: {status} {data.decode(errors='replace')}")
        state = json.loads(data)
        self._runner_pids.update(runner["pid"] for runner in state["runners"])
        return state

    def state(self) -> dict:
        """GET /_standin/state: pid, faults, runners, stats, recent_requests."""
        return self._control("GET", "/_standin/state")

    def set_fault(self, kind: str, count: int | None = None, **params: Any) -> dict:
        """Add a fault for the next `count` requests (None: until cleared); returns the state."""
        return self._control("POST", "/_standin/faults", {"kind": kind, "count": count, **params})

    def clear_faults(self) -> dict:
        return self._control("DELETE", "/_standin/faults")

    def reset_stats(self) -> dict:
        return self._control("POST", "/_standin/stats/reset")

    def runner_pids(self) -> list[int]:
        return [runner["pid"] for runner in self.state()["runners"]]


@atexit.register
def _stop_forgotten_standins():
    for standin in list(_running):
        standin.stop(timeout=1.0)
