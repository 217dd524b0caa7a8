"""``RegistryProcess``: a test registry as a child process, always cleaned up.

    with RegistryProcess(["library/tiny:v1"], rate=200_000) as registry:
        pull(f"{registry.address}/library/tiny:v1", insecure=True)
        registry.requests()      # its request log

It runs in a session of its own; its output goes to a temporary file (the
first line is the address), and stopping kills its whole process group.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable


class RegistryProcess:
    def __init__(self, models: Iterable[str] = ("library/tiny:v1",), *, rate: int = 0,
                 listen: str = "127.0.0.1:0", start_timeout: float = 15.0):
        self.argv = [sys.executable, "-m", "ollamad.testing.registry", "--listen", listen,
                     "--rate", str(rate), *(arg for m in models for arg in ("--model", m))]
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        #: "HOST:PORT", as a model name's registry part.
        self.address = ""
        self._directory: str | None = None

    def __enter__(self) -> "RegistryProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def output_path(self) -> Path:
        assert self._directory is not None, "start() first"
        return Path(self._directory, "registry.out")

    def start(self) -> "RegistryProcess":
        self._directory = tempfile.mkdtemp(prefix="ollamad-registry-")
        package_root = str(Path(__file__).resolve().parents[3])  # so the child imports us
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                           os.environ.get("PYTHONPATH")]))}
        with open(self.output_path, "wb") as out:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        try:
            self.address = self._await_address()
        except BaseException:
            self.stop()
            raise
        return self

    def _await_address(self) -> str:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            first, newline, _ = self.output().partition("\n")
            if newline:
                return first.strip()
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the registry exited with {self.process.returncode}:\n"
                                   f"{self.output()}")
            time.sleep(0.01)
        raise RuntimeError(f"the registry printed no address in {self.start_timeout} s")

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except OSError:
            return ""

    def requests(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The registry's request log (see :mod:`.server`)."""
        host, _, port = self.address.rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            connection.request("GET", "/_registry/log")
            return json.loads(connection.getresponse().read())["requests"]
        finally:
            connection.close()

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)   # its own session: group id == pid
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if self._directory:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
