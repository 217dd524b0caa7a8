"""How the supervisor thread waits: in one place, never without a deadline, always interruptible.

The thread blocks only in :meth:`Waiter.pause`, a ``poll`` on the wake pipe
(other threads' requests, finished helper threads, news from the server's
log) and whatever tells the server's exit (its pidfd). Before and after each wait the
supervisor's ``check_events`` raises an :class:`Interrupt` when something
must be handled now: a stop, a restart request, the server's exit. HTTP
probes and commands run in helper threads (:class:`~.probes.Job`) that
:meth:`Waiter.wait_for` gives up on at a hard deadline.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from ollamad.supervisor.probes import Job
from ollamad.supervisor.system import System, WakePipe

T = TypeVar("T")

#: A helper thread gets this long beyond the time-out of what it runs.
HELPER_SLACK = 0.5


class Interrupt(Exception):
    """Raised out of any wait of the supervisor thread when something needs handling now."""


class StopRequested(Interrupt):
    pass


class RestartRequested(Interrupt):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Exited(Interrupt):
    """The server exited (not reaped yet)."""


class Waiter:
    def __init__(self, system: System, check_events: Callable[[], None],
                 exit_watch: Callable[[], tuple[list[int], float]]):
        """``exit_watch()``: the fds readable once the server exits, and the longest wait
        without looking (:meth:`~.modes.OllamaServer.exit_watch`)."""
        self.wake_pipe = WakePipe()
        self._system = system
        self._check_events = check_events
        self._exit_watch = exit_watch

    def wake(self) -> None:
        self.wake_pipe.wake()

    def pause(self, deadline: float) -> None:
        """Sleep until ``deadline`` (monotonic), a wake-up or an exit; may raise an Interrupt."""
        self._check_events()
        timeout = deadline - self._system.monotonic()
        if timeout > 0:
            exit_fds, longest = self._exit_watch()
            readable = self._system.wait_readable([self.wake_pipe.read_fd, *exit_fds],
                                                  min(timeout, longest))
            if self.wake_pipe.read_fd in readable:
                self.wake_pipe.drain()
        self._check_events()

    def wait_for(self, call: Callable[[], T], timeout: float, default: T) -> T:
        """Run ``call`` in a helper thread; its result, or ``default`` after ``timeout`` (+ slack).

        Interrupts end the wait early; the helper then finishes on its own,
        bounded by its own time-out.
        """
        job = self.start(call)
        deadline = self._system.monotonic() + timeout + HELPER_SLACK
        while not job.done.is_set() and self._system.monotonic() < deadline:
            self.pause(deadline)
        return job.result if job.returned else default

    def start(self, call: Callable[[], Any]) -> Job:
        """Run ``call`` in a helper thread that wakes us when it ends."""
        return Job(call, self.wake)
