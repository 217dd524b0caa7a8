"""Spawn mode: the ``ollama serve`` we start and stop.

* A start spawns a :class:`~.process.ServerProcess`.
* A stop signals the group (SIGTERM, SIGCONT, ``stop_grace``, SIGKILL),
  sweeps orphans and reaps.
"""

from __future__ import annotations

import logging
import math
import shlex
from typing import Any, Callable

from ollamad.config import Config, OllamaSettings
from ollamad.supervisor.modes import Ended, Runner
from ollamad.supervisor.process import EXIT_POLL, ServerProcess, spawn_server
from ollamad.supervisor.proctree import ProcessTree
from ollamad.supervisor.system import System

log = logging.getLogger("ollamad.supervisor")

#: How long a sweep waits for SIGKILLed orphans to go.
SWEEP_TIMEOUT = 2.0


class SpawnedOllama:
    mode = "spawn"

    def __init__(self, system: System, on_news: Callable[[], None]):
        self._system = system
        self._on_news = on_news
        self._process: ServerProcess | None = None
        self.started_at = 0.0

    # -- what other threads read (one attribute read each: no lock needed) --------
    @property
    def url(self) -> str | None:
        process = self._process
        return process.url if process else None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process else None

    @property
    def command(self) -> str | None:
        process = self._process
        return shlex.join(process.proc.args) if process else None

    @property
    def tree(self) -> ProcessTree | None:
        process = self._process
        return process.tree if process else None

    # -- the supervisor thread ----------------------------------------------------
    def cannot_restart(self, settings: OllamaSettings) -> str | None:
        return None

    def launch(self, config: Config, restart: bool, run: Runner) -> str | None:
        process = spawn_server(self._system, config, self._on_news)
        self._process, self.started_at = process, process.started_at
        log.info("started ollama[%d]: %s", process.pid, self.command)
        return None

    def exit_watch(self) -> tuple[list[int], float]:
        process = self._process
        if process is None:
            return [], math.inf
        return ([process.pidfd], math.inf) if process.pidfd is not None else ([], EXIT_POLL)

    def has_exited(self) -> bool:
        return self._process is not None and self._process.has_exited()

    def stopped(self) -> str | None:
        return self._process.tree.stopped() if self._process else None

    def process_stats(self) -> dict[str, Any] | None:
        if self._process is None:
            return None
        return self._process.tree.stats()

    def halt(self, grace: float) -> Ended | None:
        process = self._process
        if process is None:
            return None
        returncode, swept = process.shut_down(grace, SWEEP_TIMEOUT)
        self._process = None
        return Ended(returncode, swept, process.exit_reason(returncode))
