"""What the supervisor has seen of Ollama, and the JSON-able snapshot made of it.

Written by the supervisor thread, read by any thread, always under the
supervisor's lock; :meth:`Report.snapshot` returns a deep copy, so callers
may keep or change it freely.
"""

from __future__ import annotations

import copy
from typing import Any


class Report:
    def __init__(self) -> None:
        self.restarts = 0
        #: Restarts by what caused them: exit, hang, probe, stopped, startup, requested.
        self.restart_causes: dict[str, int] = {}
        #: Probe rounds that found Ollama hung (acted on or, in external mode, reported).
        self.hang_verdicts = 0
        #: What ``GET /api/version`` said when this Ollama became RUNNING.
        self.version: str | None = None
        self.orphans_swept = 0
        self.last_exit: dict | None = None        # {"code"|"signal": n, "at": wall time}
        self.last_reason: str | None = None
        self.fatal_reason: str | None = None
        self.models: list[dict] = []
        self.process: dict | None = None          # ProcessTree.stats()
        self.last_probe: dict | None = None       # health.probe_record()
        self.up_since: float | None = None        # monotonic

    def record_exit(self, returncode: int | None, at: float) -> None:
        if returncode is None:
            self.last_exit = None
        elif returncode < 0:
            self.last_exit = {"signal": -returncode, "at": at}
        else:
            self.last_exit = {"code": returncode, "at": at}

    def gone(self) -> None:
        """Ollama is not running: nothing is loaded and there is no process to describe."""
        self.models, self.process, self.up_since, self.version = [], None, None, None

    def snapshot(self, *, mode: str, state: str, pid: int | None, url: str | None,
                 command: str | None, now: float, restarts_in_window: int) -> dict[str, Any]:
        return copy.deepcopy({
            "mode": mode,
            "state": state,
            "pid": pid,
            "url": url,
            "command": command,
            "uptime_s": None if self.up_since is None else round(now - self.up_since, 3),
            "restarts": self.restarts,
            "restart_causes": self.restart_causes,
            "hang_verdicts": self.hang_verdicts,
            "version": self.version,
            "restarts_in_window": restarts_in_window,
            "last_exit": self.last_exit,
            "last_reason": self.last_reason,
            "fatal_reason": self.fatal_reason,
            "models": self.models,
            "process": self.process,
            "last_probe": self.last_probe,
            "orphans_swept": self.orphans_swept,
        })
