"""External mode: an Ollama someone else started (a distribution's ``ollama.service``).

We probe it exactly like one we spawned and report what we see, including
its process when we can find it: the process listening on the URL's port
(:class:`~.listeners.ListenerFinder`).
Finding another user's socket owner may need privileges; without them the
process is simply not reported. We never signal it. The only way we restart
it is ``ollama.restart_command`` (for example ``systemctl restart ollama``),
run with a time-out.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from typing import Any

from ollamad.config import Config, OllamaSettings
from ollamad.notify import child_environment
from ollamad.supervisor.listeners import ListenerFinder
from ollamad.supervisor.modes import Ended, Runner
from ollamad.supervisor.process import connect_url
from ollamad.supervisor.proctree import ProcessTree
from ollamad.supervisor.states import SupervisorError
from ollamad.supervisor.system import System

log = logging.getLogger("ollamad.supervisor")


class ExternalOllama:
    """The Ollama at the configured URL, and its process tree when we can find it."""

    mode = "external"
    command = None

    def __init__(self, system: System):
        self._system = system
        self._finder: ListenerFinder | None = None
        self.url: str | None = None
        self.tree: ProcessTree | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        tree = self.tree
        return tree.root_pid if tree else None

    def cannot_restart(self, settings: OllamaSettings) -> str | None:
        if settings.restart_command:
            return None
        return "it runs in external mode and ollama.restart_command is not set"

    def stop_previous(self, grace: float) -> None:
        """Nothing of ours can be left over: we never start an external Ollama."""

    def launch(self, config: Config, restart: bool, run: Runner) -> str | None:
        """Watch ``ollama.url`` (anew: it may have been reloaded); after a failure or an
        operator's request, run the restart command first."""
        self.url, self.tree = connect_url(config.ollama.url), None
        if self.url is None:
            raise SupervisorError(f"ollama.url {config.ollama.url!r}: external mode needs a port")
        self._finder = ListenerFinder(config.ollama.url, self._system)
        command, timeout = config.ollama.restart_command, config.ollama.startup_timeout
        error = None
        if restart and command:
            error = run(lambda: run_restart_command(self._system, command, timeout), timeout,
                        f"restart command {command!r} did not finish")
            if error:
                log.error("%s", error)
        self.started_at = self._system.monotonic()
        return error

    def exit_watch(self) -> tuple[list[int], float]:
        return [], math.inf   # not our child: its exit shows as failed probes

    def has_exited(self) -> bool:
        return False

    def foreign_listener(self) -> str | None:
        return None   # whoever answers at the URL is the one we were told to watch

    def stopped(self) -> str | None:
        return self.tree.stopped() if self.tree else None

    def process_stats(self) -> dict[str, Any] | None:
        """Look for the listening process again (it may have been restarted), then its stats."""
        self.tree = self._finder.find() if self._finder else None
        return self.tree.stats() if self.tree else None

    def halt(self, grace: float) -> Ended | None:
        """Never signalled: only forgotten, until the next probe round finds it again."""
        self.tree = None
        return None


def run_restart_command(system: System, command: str, timeout: float) -> str | None:
    """Run ``ollama.restart_command``; None when it succeeded, else what went wrong."""
    try:
        code, output = system.run(shlex.split(command), child_environment(os.environ), timeout)
    except (OSError, ValueError) as exc:
        return f"restart command {command!r} could not run: {exc}"
    if output.strip():
        log.info("restart command output: %s", output.strip())
    if code is None:
        return f"restart command {command!r} timed out after {timeout:g} s"
    if code != 0:
        return f"restart command {command!r} failed with exit code {code}"
    return None
