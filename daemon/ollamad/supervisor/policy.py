"""When to restart after a failure: exponential back-off and the FATAL limit.

The policy counts failures (exits, failed probes, start-up time-outs) inside a
sliding window of ``restart_window`` seconds:

* the first failure in the window restarts at once: a server that ran fine
  and then crashed should be back within a second;
* each further one waits ``restart_backoff_initial`` seconds, doubling up to
  ``restart_backoff_max`` (1, 2, 4, ... with the defaults);
* more than ``max_restarts`` failures in the window is FATAL: no more
  restarts until an operator asks for one or the config is reloaded, which
  :meth:`RestartPolicy.reset` the count.

Restarts an operator asks for are not failures and are not counted here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ollamad.config import OllamaSettings


@dataclass(frozen=True)
class Verdict:
    """What to do after a failure: wait ``delay`` seconds and start again, or stop (``fatal``)."""

    delay: float
    fatal: str | None = None


class RestartPolicy:
    def __init__(self, settings: OllamaSettings):
        self.settings = settings
        self._failures: deque[float] = deque()

    def _forget_old(self, now: float) -> None:
        while self._failures and self._failures[0] <= now - self.settings.restart_window:
            self._failures.popleft()

    def failures_in_window(self, now: float) -> int:
        self._forget_old(now)
        return len(self._failures)

    def record_failure(self, now: float, reason: str) -> Verdict:
        """Count one failure at ``now`` (a monotonic time) and decide."""
        self._failures.append(now)
        count = self.failures_in_window(now)
        s = self.settings
        if count > s.max_restarts:
            return Verdict(0.0, f"failed {count} times in {s.restart_window:g} s; last: {reason}")
        if count == 1:
            return Verdict(0.0)
        return Verdict(min(s.restart_backoff_initial * 2 ** (count - 2), s.restart_backoff_max))

    def reset(self) -> None:
        self._failures.clear()
