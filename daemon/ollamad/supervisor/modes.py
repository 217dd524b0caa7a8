"""What the supervisor needs of an Ollama, whoever runs it: one object per ``ollama.mode``.

* :class:`~.spawned.SpawnedOllama` (``spawn``): the ``ollama serve`` we
  start, stop, restart and record.
* :class:`~.external.ExternalOllama` (``external``): one somebody else runs;
  never signalled, restarted only through ``ollama.restart_command``.

The state machine (:mod:`.supervisor`) picks one when it is made and then
talks to it only through :class:`OllamaServer`. Its supervisor thread makes
every call; other threads only read ``url``, ``pid``, ``command`` and
``tree``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

from ollamad.config import Config, OllamaSettings
from ollamad.supervisor.proctree import ProcessTree

T = TypeVar("T")
#: How blocking work is run (the supervisor's interruptible wait): (call, time-out, result if
#: it runs out of time) -> result.
Runner = Callable[[Callable[[], T], float, T], T]


@dataclass(frozen=True)
class Ended:
    """A server of ours that was stopped (or exited) and reaped."""

    returncode: int | None
    #: Orphans swept after it.
    swept: int
    #: Why it ended, for operators.
    reason: str
    #: Restarting cannot help (another process holds the port): no retries.
    permanent: bool = False


class OllamaServer(Protocol):
    mode: str
    #: Base URL, once known.
    url: str | None
    pid: int | None
    #: The command line, where we started it.
    command: str | None
    #: The server and its descendants, when known.
    tree: ProcessTree | None
    #: When the last launch finished (monotonic): start-up time counts from here.
    started_at: float

    def cannot_restart(self, settings: OllamaSettings) -> str | None:
        """Why we may not restart it (then failures are only reported); None when we may."""

    def stop_previous(self, grace: float) -> None:
        """Before the first launch: stop what a crashed previous daemon left running."""

    def launch(self, config: Config, restart: bool, run: Runner) -> str | None:
        """Start (or restart) it; :class:`SupervisorError` when it cannot be, and a problem
        that does not stop the start (to report) otherwise."""

    def exit_watch(self) -> tuple[list[int], float]:
        """The fds that become readable when the server exits, and the longest wait without
        looking (where there is no such fd)."""

    def has_exited(self) -> bool:
        """Our server exited by itself (not reaped yet)."""

    def foreign_listener(self) -> str | None:
        """``GET /`` answered: why that was not our server (then nothing may be sent to it)."""

    def stopped(self) -> str | None:
        """A probe failed: why the server cannot answer although it exists (SIGSTOP)."""

    def process_stats(self) -> dict[str, Any] | None:
        """The tree's resources, in a full probe round (:meth:`ProcessTree.stats`)."""

    def halt(self, grace: float) -> Ended | None:
        """Stop our server (:func:`~.proctree.stop_group`), sweep and reap it; None when
        there was none. Either way the process we knew is forgotten."""
