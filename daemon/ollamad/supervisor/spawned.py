"""Spawn mode: the ``ollama serve`` we start, prove ours, record, and stop.

* Before the first start, what a crashed previous daemon left running is
  stopped (:mod:`.record`).
* A start spawns a :class:`~.process.ServerProcess` and records its tree.
* ``GET /`` answering is not enough: with a fixed port, an orphan or a
  distribution's ``ollama.service`` may hold it and answer in our server's
  place. Before RUNNING, the port's listening socket must belong to a
  process of our tree (:func:`~.listeners.foreign_listener`). Another holder
  will not go away by retrying, so that failure is permanent (FATAL), and so
  is our server exiting with ``address already in use`` while somebody
  listens on the port.
* A stop signals the group (SIGTERM, SIGCONT, ``stop_grace``, SIGKILL),
  sweeps orphans, reaps, and removes the record.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from typing import Any, Callable

from ollamad.config import Config, OllamaSettings
from ollamad.supervisor.listeners import PORT_REMEDY, foreign_listener, port_holders
from ollamad.supervisor.modes import Ended, Runner
from ollamad.supervisor.process import EXIT_POLL, ServerProcess, spawn_server
from ollamad.supervisor.proctree import ProcessTree
from ollamad.supervisor.record import TreeRecord, runtime_directory
from ollamad.supervisor.system import System

log = logging.getLogger("ollamad.supervisor")

#: How long a sweep waits for SIGKILLed orphans to go.
SWEEP_TIMEOUT = 2.0


class SpawnedOllama:
    mode = "spawn"

    def __init__(self, config: Config, system: System, on_news: Callable[[], None]):
        self._system = system
        self._on_news = on_news
        self._record = TreeRecord(runtime_directory(config, os.environ), system)
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

    def stop_previous(self, grace: float) -> None:
        self._record.stop_previous(grace)

    def launch(self, config: Config, restart: bool, run: Runner) -> str | None:
        process = spawn_server(self._system, config, self._on_news)
        self._process, self.started_at = process, process.started_at
        self._record.save(process.tree)
        log.info("started ollama[%d]: %s", process.pid, self.command)
        return None

    def exit_watch(self) -> tuple[list[int], float]:
        process = self._process
        if process is None:
            return [], math.inf
        return ([process.pidfd], math.inf) if process.pidfd is not None else ([], EXIT_POLL)

    def has_exited(self) -> bool:
        return self._process is not None and self._process.has_exited()

    def foreign_listener(self) -> str | None:
        assert self._process is not None and self._process.url is not None
        return foreign_listener(self._process.url, self._process.tree)

    def stopped(self) -> str | None:
        return self._process.tree.stopped() if self._process else None

    def process_stats(self) -> dict[str, Any] | None:
        if self._process is None:
            return None
        stats = self._process.tree.stats()
        self._record.save(self._process.tree)   # with the descendants stats() has seen
        return stats

    def halt(self, grace: float) -> Ended | None:
        process = self._process
        if process is None:
            return None
        returncode, swept = process.shut_down(grace, SWEEP_TIMEOUT)
        self._record.remove()
        self._process = None
        reason = process.exit_reason(returncode)
        if not process.port_taken:
            return Ended(returncode, swept, reason)
        holders = port_holders(process.configured_url)
        if not holders:   # gone since: a restart may work
            return Ended(returncode, swept, f"{reason} (another process held the port)")
        return Ended(returncode, swept, f"{reason} (held by {', '.join(holders)}). "
                     f"{PORT_REMEDY}", permanent=True)
