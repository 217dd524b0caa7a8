"""The daemon talks only to the Ollama it started."""

from __future__ import annotations

import pytest

from ollamad_client import OllamadError


def _state(client):
    try:
        return client.status()["ollama"]["state"]
    except OllamadError:
        return None


def test_a_foreign_server_on_the_fixed_port_gets_no_request_and_is_named(
        daemon_factory, ollama_standin_factory, wait_for):
    foreign = ollama_standin_factory()   # on a free port from the OS, which we then fix
    daemon = daemon_factory({"ollama": {"url": foreign.url}}, ready=False)
    with daemon.client(timeout=5.0) as client:
        wait_for(lambda: _state(client) == "FATAL", 20, "FATAL")
        status, health = client.status()["ollama"], client.health()
        with pytest.raises(OllamadError) as error:
            client.generate("this must not reach the foreign server", timeout=5.0)
    assert error.value.code.value == "unavailable"
    assert f"pid {foreign.pid} (" in status["fatal_reason"], status["fatal_reason"]
    assert "set ollama.url to port 0" in status["fatal_reason"]
    assert any(f"pid {foreign.pid} (" in reason for reason in health["reasons"]), health
    # Our own probes may have said GET / to it; nothing else reached it.
    requests_seen = foreign.state()["stats"]["requests"]
    assert set(requests_seen) <= {"GET /"}, requests_seen
