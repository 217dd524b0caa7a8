"""The supervisor's vocabulary: its states, the transitions between them, its error.

The state names are supervisord's, so operators read them without a glossary:

========  ================================================================
STOPPED   not running because nobody asked for it yet, or it was stopped
STARTING  launched (or, in external mode, restart command run); waiting
          for ``GET /`` to answer 200
RUNNING   ``GET /`` answered; probed every ``probe_interval``
BACKOFF   failed; waiting out the restart back-off before the next start
STOPPING  being stopped (spawn mode: SIGTERM and SIGCONT, grace, SIGKILL,
          sweep; external mode: only no longer watched)
EXITED    gone (exited, killed after failing a probe, or, in external
          mode, no longer answering)
FATAL     failed too often in the restart window; no more restarts until
          an operator asks (``restart``) or the config is reloaded
========  ================================================================

Every transition is listed in :data:`TRANSITIONS`; the supervisor refuses
any other, so a bug in the loop shows up as an error rather than a strange
state reported to systemd.
"""

from __future__ import annotations

import enum


class SupervisorError(RuntimeError):
    """Ollama cannot be started or restarted as configured; the message says why and what to do."""


class InvalidTransition(RuntimeError):
    """The supervisor tried a state change that :data:`TRANSITIONS` does not allow (a bug)."""


class State(str, enum.Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"

    def __str__(self) -> str:
        return self.value


#: Allowed transitions. A failure always passes through EXITED, where the
#: restart policy picks STARTING (restart now), BACKOFF or FATAL; an
#: operator's restart goes STOPPING -> STOPPED -> STARTING and resets the policy.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.STOPPING, State.EXITED}),
    State.RUNNING: frozenset({State.STOPPING, State.EXITED}),
    State.STOPPING: frozenset({State.STOPPED, State.EXITED}),
    State.EXITED: frozenset({State.STARTING, State.BACKOFF, State.FATAL, State.STOPPED}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED}),
    State.FATAL: frozenset({State.STARTING, State.STOPPED}),
}


def check_transition(old: State, new: State) -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is allowed."""
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"{old} -> {new} is not an allowed transition")
