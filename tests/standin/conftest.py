"""Shared fixtures for the stand-in's own tests.

`standin` is one stand-in shared by a whole module, for tests that only read
or generate; tests that inject faults or need other settings start their own
with the plugin's `ollama_standin_factory`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from ollamad.testing import StandIn


@pytest.fixture(scope="module")
def standin():
    with StandIn(token_delay=0.0) as running:
        yield running


def _wait_until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition"):
    """Poll `condition` until it is truthy and return its value; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def wait_until():
    return _wait_until
