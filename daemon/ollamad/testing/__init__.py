"""Test helpers for code that talks to Ollama: a faithful stand-in for `ollama serve`.

`StandIn` starts `ollamad stand-in` as a real child process on a free port and
always cleans it up (server, runners, orphans). The pytest plugin in
`ollamad.testing.pytest_plugin` wraps it as fixtures. Imports stay lazy so
that loading the pytest plugin costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from ollamad.testing.fixture import StandIn, StandInError, standin_environment

__all__ = ["StandIn", "StandInError", "standin_environment"]


def __getattr__(name: str):
    if name in __all__:
        from ollamad.testing import fixture
        return getattr(fixture, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
