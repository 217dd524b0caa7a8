"""pytest fixtures that start the Ollama stand-in (registered as a pytest11 plugin).

- `ollama_standin`: a fresh stand-in per test (no token delay, no load time).
- `ollama_standin_factory`: call it with `StandIn` keyword arguments to start
  as many stand-ins as a test needs; all of them are stopped at teardown.

The module imports only pytest at load time: every pytest run in an
environment with ollamad installed loads it.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def ollama_standin():
    """A running stand-in (`ollamad.testing.StandIn`) with instant generation."""
    from ollamad.testing.fixture import StandIn

    with StandIn(token_delay=0.0) as standin:
        yield standin


@pytest.fixture
def ollama_standin_factory():
    """A function `start(**standin_kwargs) -> StandIn`; everything started is stopped."""
    from ollamad.testing.fixture import StandIn

    started: list[StandIn] = []

    def start(**kwargs) -> StandIn:
        standin = StandIn(**kwargs)
        started.append(standin)
        return standin.start()

    try:
        yield start
    finally:
        for standin in reversed(started):
            standin.stop()
