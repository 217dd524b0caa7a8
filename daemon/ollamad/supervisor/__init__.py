"""Supervision of ``ollama serve``: start, probe, restart, stop; or watch an external one.

See :mod:`.supervisor` for how it works and :mod:`.probes` for the hang rule.
"""

from ollamad.supervisor.states import State, SupervisorError
from ollamad.supervisor.supervisor import Supervisor
from ollamad.supervisor.system import System

__all__ = ["State", "Supervisor", "SupervisorError", "System"]
