"""Shared fixtures for the stand-in's own tests.

`standin` is one stand-in shared by a whole module, for tests that only read
or generate; tests that inject faults or need other settings start their own
with the plugin's `ollama_standin_factory`.
"""

from __future__ import annotations


import pytest

from ollamad.testing import StandIn


@pytest.fixture(scope="module")
def standin():
    with StandIn(token_delay=0.0) as running:
        yield running


