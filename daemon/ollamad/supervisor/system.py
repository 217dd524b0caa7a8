"""Every system call the supervisor makes, behind one object.

Spawning, signalling, waiting for an exit, running a command and reading the
clock all go through :class:`System`, so that tests can record them (for
example: "external mode never sends a signal") or fake the clock, and so that
the rest of the package reads as policy rather than plumbing.
"""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from typing import Mapping, Sequence

#: How much of a restart command's output we keep for the log.
COMMAND_OUTPUT_LIMIT = 16 * 1024
#: How long to wait for a command we SIGKILLed to be reaped.
REAP_AFTER_KILL = 5.0


class WakePipe:
    """A self-pipe: other threads call :meth:`wake` to end the supervisor's ``select`` early."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # A probe thread may finish after close(): it must not write to a
        # closed, maybe reused, descriptor.
        self._lock = threading.Lock()
        self._closed = False

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._write_fd, b"\0")
            except BlockingIOError:  # already full of wake-ups: one is enough
                pass

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.read_fd)
                os.close(self._write_fd)


class System:
    """The real thing. Subclass and override to observe or fake."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
        """Start ``argv`` as the leader of a new session (so of its own process group).

        stdout and stderr share one pipe that the caller reads line by line.
        """
        return subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)

    def pidfd_open(self, pid: int) -> int | None:
        """A pidfd that becomes readable when ``pid`` exits; None where there is none
        (kernels before 5.3, seccomp filters), and the caller polls instead."""
        try:
            return os.pidfd_open(pid)
        except (AttributeError, OSError):
            return None

    def has_exited(self, pid: int) -> bool:
        """Whether our child ``pid`` has exited, *without* reaping it (the fallback for no pidfd).

        An unreaped child keeps its pid, so its process group and session
        ids cannot be reused while we clean up after it.
        """
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def wait_readable(self, fds: Sequence[int], timeout: float) -> list[int]:
        """The fds readable within ``timeout`` seconds (poll(2): no FD_SETSIZE limit)."""
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        # Rounded up: a 0 ms poll for a 0.4 ms remainder would spin.
        return [fd for fd, _ in poller.poll(math.ceil(max(0.0, timeout) * 1000))]

    def killpg(self, pgid: int, sig: signal.Signals) -> bool:
        """Signal a whole process group; False when the group is already gone."""
        try:
            os.killpg(pgid, sig)
            return True
        except ProcessLookupError:
            return False

    def kill(self, pid: int, sig: signal.Signals) -> bool:
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def run(self, argv: Sequence[str], env: Mapping[str, str],
            timeout: float) -> tuple[int | None, str]:
        """Run a command to completion: (exit code or None on time-out, output).

        Output goes to a temporary file, not a pipe: a command that starts a
        background server (``ollama serve &``) would hold a pipe open for
        ever. On time-out only the command itself is killed, never what it
        started.
        """
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                                    stdout=output, stderr=subprocess.STDOUT, close_fds=True)
            try:
                code: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=REAP_AFTER_KILL)
                except subprocess.TimeoutExpired:
                    pass
                code = None
            output.seek(0)
            text = output.read(COMMAND_OUTPUT_LIMIT).decode("utf-8", "replace")
        return code, text
