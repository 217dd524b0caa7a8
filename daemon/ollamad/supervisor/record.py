"""The record of the Ollama a daemon runs, so that the next daemon can stop it after a crash.

``ollama serve`` runs in a session of its own, so a daemon killed outside
systemd (``kill -9``, the OOM killer) leaves its whole tree running, runners
and their GPU memory included, and the next daemon would start a second
Ollama beside it. So the daemon records its server in
``<runtime_dir>/ollama.json``: the server's pid and create time, every
descendant seen so far with theirs (:class:`~.proctree.ProcessTree` keeps
them), and the daemon's own. It is written atomically (a temporary file
renamed over it) with mode 0600, rewritten when the tree grows, and removed
once that tree is stopped, so a clean stop leaves none.

A daemon that starts reads the record before it starts Ollama and stops
what is left of that tree: SIGTERM and SIGCONT to the server's group (while
the server itself still runs), ``stop_grace``, SIGKILL, then the sweep. A
process counts as that tree's only with the same pid *and* create time
(psutil) as recorded, or as a member of the server's session while the
server itself still exists; a pid that now belongs to another process is
left alone, and nothing else is signalled. A record whose daemon still runs
belongs to that daemon: it is left alone too.

``runtime_dir`` defaults to the directory of an ipc socket, else
``$RUNTIME_DIRECTORY`` (systemd's ``RuntimeDirectory=``), else
``/run/ollamad``. Without a writable directory there is no record: logged
once, and the daemon runs on.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import psutil

from ollamad.config import Config
from ollamad.supervisor.proctree import SWEEP_POLL, ProcessTree, stop_group
from ollamad.supervisor.system import System

log = logging.getLogger("ollamad.supervisor")

RECORD_NAME = "ollama.json"
FALLBACK_RUNTIME_DIR = "/run/ollamad"
#: How long the sweep after stopping a previous tree waits for SIGKILLed processes to go.
SWEEP_TIMEOUT = 2.0


def runtime_directory(config: Config, environ: Mapping[str, str]) -> Path:
    """Where the record lives: ``runtime_dir``, else the ipc socket's directory, else
    ``$RUNTIME_DIRECTORY`` (its first entry), else ``/run/ollamad``."""
    if config.runtime_dir:
        return Path(config.runtime_dir)
    if config.socket.startswith("ipc://"):
        return Path(config.socket[len("ipc://"):]).parent
    if environ.get("RUNTIME_DIRECTORY"):
        return Path(environ["RUNTIME_DIRECTORY"].split(":")[0])
    return Path(FALLBACK_RUNTIME_DIR)


def _identity(process: psutil.Process) -> dict[str, Any]:
    return {"pid": process.pid, "create_time": process.create_time()}


def _state(pid: int, created: float) -> str:
    """``running``, ``gone`` (a zombie is gone), or ``reused``: the pid is another process's."""
    try:
        process = psutil.Process(pid)
        if process.create_time() != created:
            return "reused"
        return "gone" if process.status() == psutil.STATUS_ZOMBIE else "running"
    except psutil.Error:
        return "gone"


class TreeRecord:
    def __init__(self, directory: Path, system: System):
        self.path = directory / RECORD_NAME
        self._system = system
        self._daemon = _identity(psutil.Process())
        self._saved: dict[str, Any] | None = None   # what the file holds now
        self._failure_logged = False

    # -- this daemon's tree --------------------------------------------------------
    def save(self, tree: ProcessTree) -> None:
        """Record ``tree`` as it is known now; a no-op when nothing changed since the last save."""
        content = {"daemon": self._daemon,
                   "server": {"pid": tree.root_pid, "create_time": tree.root_created},
                   "descendants": [{"pid": pid, "create_time": created}
                                   for pid, created in sorted(tree.known().items())]}
        if content == self._saved:
            return
        try:
            handle, temporary = tempfile.mkstemp(prefix=f".{RECORD_NAME}.", dir=self.path.parent)
            try:
                with os.fdopen(handle, "w") as file:   # mkstemp: mode 0600
                    json.dump(content, file)
                os.replace(temporary, self.path)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as exc:
            if not self._failure_logged:
                log.warning("cannot record Ollama's process tree in %s (%s): after a crash of "
                            "ollamad, the next one cannot stop it; set runtime_dir",
                            self.path, exc.strerror or exc)
                self._failure_logged = True
            return
        self._saved = content

    def remove(self) -> None:
        """The recorded tree is stopped: forget it."""
        if self._saved is not None:
            self._unlink()
            self._saved = None

    def _unlink(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc.strerror)

    # -- a previous daemon's tree --------------------------------------------------
    def stop_previous(self, grace: float) -> None:
        """Stop what is left of the tree a previous daemon recorded (module docstring)."""
        try:
            content = json.loads(self.path.read_text())
            daemon, server = content["daemon"], content["server"]
            root_pid, root_created = int(server["pid"]), float(server["create_time"])
            known = {int(d["pid"]): float(d["create_time"]) for d in content["descendants"]}
            writer = int(daemon["pid"]), float(daemon["create_time"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable record %s: %s", self.path, exc)
            return
        if _state(*writer) == "running":
            log.error("%s belongs to ollamad[%d], which still runs: leaving its Ollama alone "
                      "(do two daemons share runtime_dir?)", self.path, writer[0])
            return
        found = ", ".join(f"{'ollama' if pid == root_pid else 'descendant'}[{pid}] "
                          f"{_STATES[_state(pid, created)]}"
                          for pid, created in {root_pid: root_created, **known}.items())
        log.warning("%s names the Ollama of a previous ollamad: %s", self.path, found)
        tree = ProcessTree(root_pid, self._system, root_created=root_created, known=known)
        if tree.root_alive():
            tree.remember()   # its session members too, while its pid is still held
            stop_group(self._system, root_pid, grace, lambda timeout: _gone(tree, timeout))
        swept = tree.sweep(SWEEP_TIMEOUT)
        log.warning("the previous ollamad's Ollama is stopped; the sweep after it killed %d "
                    "more process(es)", swept)
        self._unlink()


_STATES = {"running": "running: stopping it", "gone": "gone",
           "reused": "gone, its pid now another process's (create time differs): left alone"}


def _gone(tree: ProcessTree, timeout: float) -> bool:
    """Whether the tree's server is gone (a zombie counts) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while tree.root_alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(SWEEP_POLL)
    return True
