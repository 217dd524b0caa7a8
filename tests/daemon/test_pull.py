"""Pulls go through the daemon: the admin op `pull`, the client's `pull()`, `ollamad pull`.

The daemon supervises the stand-in, which pulls plain names from its catalog and names
with a registry host from a test registry process over HTTP, as Ollama does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import requests
import zmq

from ollamad_client import (BackendError, Busy, Forbidden, ModelNotFound, RequestTimeout,
                            Unavailable, protocol)

SLOW_WEIGHTS = 400_000
SLOW_RATE = 100_000   # the weights take ~4 s: time to leave in the middle


def ollamad(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ollamad", *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ))


def layer_sizes(registry, repository: str, tag: str) -> dict[str, int]:
    manifest = requests.get(f"http://{registry.address}/v2/{repository}/manifests/{tag}",
                            timeout=5).json()
    return {layer["digest"]: layer["size"] for layer in [*manifest["layers"], manifest["config"]]}


def installed(daemon) -> set[str]:
    with daemon.client(timeout=10.0) as client:
        return {model["name"] for model in client.models()["models"]}


def blob_gets(registry, size: int) -> list[dict]:
    return [r for r in registry.requests() if r["method"] == "GET" and r["total"] == size]


@pytest.fixture(scope="module")
def puller(module_daemon_factory):
    """A daemon for pulls of models no other test here pulls."""
    return module_daemon_factory()


def test_an_admin_pull_of_a_catalog_model_streams_its_statuses_and_the_model_is_listed(puller):
    assert "llama3.2:3b" not in installed(puller)
    with puller.client() as client:
        stream = client.pull("llama3.2:3b")
        seen = list(stream)
    statuses = [progress["status"] for progress in seen]
    assert statuses[0] == "pulling manifest"
    assert len(statuses) == 7 and all(re.fullmatch(r"pulling [0-9a-f]{12}", s)
                                      for s in statuses[1:4]), statuses
    assert statuses[4:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert all(p["completed"] == p["total"] > 0 and p["digest"].startswith("sha256:")
               for p in seen[1:4])
    assert stream.result == {"model": "llama3.2:3b", "status": "success", "allowed": True}
    assert "llama3.2:3b" in installed(puller)


def test_the_async_client_pulls_too(puller):
    import asyncio
    from ollamad_client import AsyncClient

    async def pull() -> tuple[list[str], dict]:
        async with AsyncClient(puller.socket) as client:
            stream = client.pull("qwen2.5:0.5b")
            return [progress["status"] async for progress in stream], stream.result

    statuses, result = asyncio.run(pull())
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert result["model"] == "qwen2.5:0.5b" and "qwen2.5:0.5b" in installed(puller)


def test_a_pull_from_a_registry_shows_layer_progress_and_the_model_then_generates(
        puller, registry_factory):
    registry = registry_factory(["library/tiny:v1=200000"])
    name = f"{registry.address}/library/tiny:v1"
    sizes = layer_sizes(registry, "library/tiny", "v1")
    with puller.client() as client:
        stream = client.pull(name, insecure=True)
        seen = list(stream)
        assert [p["status"] for p in seen][0] == "pulling manifest"
        assert [p["status"] for p in seen][-1] == "success"
        for digest, size in sizes.items():
            layer = [p for p in seen if p.get("digest") == digest]
            assert layer and all(p["total"] == size for p in layer)
            assert layer[-1]["completed"] == size
        assert stream.result["status"] == "success" and stream.result["model"] == name
        assert name in installed(puller)
        answer = client.generate("hello, pulled model", model=name, max_tokens=4)
    assert answer["text"] and answer["model"] == name
    assert all(r["state"] == "done" for r in registry.requests())


def test_a_registry_that_refuses_connections_fails_with_ollamas_own_text(puller, closed_port):
    name = f"127.0.0.1:{closed_port}/library/tiny:v1"
    with puller.client() as client, pytest.raises(BackendError) as failed:
        list(client.pull(name, insecure=True))
    assert failed.value.message == (
        f'pull model manifest: Get "http://127.0.0.1:{closed_port}/v2/library/tiny/manifests/'
        f'v1": dial tcp 127.0.0.1:{closed_port}: connect: connection refused')


def test_a_model_the_registry_lacks_is_model_not_found_with_ollamas_text(
        puller, registry_factory):
    registry = registry_factory(["library/tiny:v1"])
    with puller.client() as client, pytest.raises(ModelNotFound) as failed:
        list(client.pull(f"{registry.address}/library/absent:v1", insecure=True))
    assert failed.value.message == "pull model manifest: file does not exist"
    assert failed.value.code.value == "model_not_found" and not failed.value.retryable


def test_a_peer_that_is_not_admin_is_forbidden_and_told_who_may(daemon_factory):
    daemon = daemon_factory({"socket": "tcp://127.0.0.1:*"}, ready=False)
    daemon.wait_bound()
    daemon.wait_ready()
    with daemon.client() as client, pytest.raises(Forbidden) as refused:
        list(client.pull("llama3.2:3b"))
    assert "root" in refused.value.message and "admin_group" in refused.value.message
    out = ollamad("pull", "llama3.2:3b", "--socket", daemon.socket)
    assert out.returncode == 1 and out.stderr.startswith("ollamad: forbidden: pull is an admin "
                                                         "op: only root"), out.stderr
    assert "llama3.2:3b" not in installed(daemon)


def test_the_cli_prints_a_line_per_status_and_layer_and_exits_0(puller, registry_factory):
    registry = registry_factory(["library/cli:v1=150000"])
    name = f"{registry.address}/library/cli:v1"
    out = ollamad("pull", name, "--insecure", "--socket", puller.socket)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success", lines
    weights = next(d for d, size in layer_sizes(registry, "library/cli", "v1").items()
                   if size == 150000)
    assert f"pulling {weights[7:19]}  100% of 146.5 KiB (146.5 KiB)" in lines, lines
    assert "verifying sha256 digest" in lines and "\r" not in out.stdout   # not a terminal
    as_json = ollamad("pull", name, "--insecure", "--json", "--socket", puller.socket)
    assert as_json.returncode == 0, as_json.stderr
    parsed = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert parsed[0] == {"status": "pulling manifest"}
    assert parsed[-1] == {"model": name, "status": "success", "allowed": True}


def test_the_cli_exits_1_naming_the_cause(puller, closed_port, short_tmp):
    out = ollamad("pull", f"127.0.0.1:{closed_port}/library/tiny:v1", "--insecure",
                  "--socket", puller.socket)
    assert out.returncode == 1
    assert out.stderr.startswith("ollamad: backend_error: pull model manifest: Get ")
    assert "connect: connection refused" in out.stderr
    absent = ollamad("pull", "llama3.2:1b", "--socket", f"ipc://{short_tmp}/absent.sock")
    assert absent.returncode == 1
    assert f"not reachable at ipc://{short_tmp}/absent.sock: there is no socket file" \
        in absent.stderr


def test_a_model_outside_allowed_models_may_be_pulled_and_the_cli_says_clients_cannot_use_it(
        daemon_factory):
    daemon = daemon_factory({"allowed_models": ["llama3.1:8b"]})
    out = ollamad("pull", "mistral:7b", "--socket", daemon.socket)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == ("note: mistral:7b is not in allowed_models: clients "
                                           "cannot use it until it is added there (and the "
                                           "daemon reloaded)")
    assert "mistral:7b" in installed(daemon)


def open_pull(socket: str, name: str, request_id: str) -> zmq.Socket:
    """A raw DEALER that has asked for a streamed pull and read its first weights progress."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(socket)
    sock.send(protocol.encode_request(protocol.Request(
        request_id, "pull", {"model": name, "insecure": True}, stream=True)))
    while True:
        reply = protocol.decode_reply(sock.recv())
        assert reply.chunk is not None, reply
        if reply.chunk.get("total") == SLOW_WEIGHTS and reply.chunk.get("completed"):
            return sock


@pytest.mark.parametrize("leaving", ["connection closes", "stream closed"])
def test_a_client_that_leaves_mid_pull_stops_the_download(daemon, registry_factory, wait_for,
                                                          leaving):
    registry = registry_factory([f"library/slow:v1={SLOW_WEIGHTS}"], rate=SLOW_RATE)
    name = f"{registry.address}/library/slow:v1"
    if leaving == "connection closes":
        open_pull(daemon.socket, name, "pull-and-go").close()
    else:
        with daemon.client() as client:
            with client.pull(name, insecure=True) as stream:
                next(p for p in stream if p.get("total") == SLOW_WEIGHTS and p["completed"])
            # Leaving the block closes the stream early: the client sends `cancel`.
    # The daemon cuts its HTTP request; Ollama (the stand-in) stops the download.
    cut = wait_for(lambda: [r for r in blob_gets(registry, SLOW_WEIGHTS) if r["state"] != "sending"],
                   3, "the registry to see the weights' download stop")
    assert cut[0]["state"] == "cut" and cut[0]["sent"] < SLOW_WEIGHTS
    wait_for(lambda: not daemon.standin_state()["pulls"], 2, "Ollama to drop the pull")
    with daemon.client() as client:
        assert client.status()["ollama"]["pulls_in_progress"] == []
        assert client.metrics()["errors"].get("cancelled") == 1
    assert name not in installed(daemon)


def test_a_second_pull_is_busy_while_the_first_runs(daemon_factory, registry_factory):
    daemon = daemon_factory({"ollama": {"max_pulls": 1}})
    registry = registry_factory([f"library/slow:v1={SLOW_WEIGHTS}", "library/tiny:v1"],
                                rate=SLOW_RATE)
    first = open_pull(daemon.socket, f"{registry.address}/library/slow:v1", "first")
    try:
        with daemon.client() as client:
            status = client.status()["ollama"]["pulls_in_progress"]
            assert [p["model"] for p in status] == [f"{registry.address}/library/slow:v1"]
            with pytest.raises(Busy) as same:
                list(client.pull(f"{registry.address}/library/slow:v1", insecure=True))
            with pytest.raises(Busy) as other:
                list(client.pull(f"{registry.address}/library/tiny:v1", insecure=True))
    finally:
        first.close()
    assert "is being pulled already" in same.value.message and same.value.retry_after == 10.0
    assert "ollama.max_pulls" in other.value.message and other.value.retryable


def test_a_pull_whose_progress_stalls_fails_at_its_stall_timeout(daemon, registry_factory,
                                                                 wait_for):
    # 1 KiB every 2 s: each progress line comes 2 s after the one before.
    registry = registry_factory(["library/stalling:v1=100000"], rate=500)
    name = f"{registry.address}/library/stalling:v1"
    with daemon.client() as client, pytest.raises(RequestTimeout) as stalled:
        list(client.pull(name, insecure=True, timeout=1.0))
    assert stalled.value.message == "Ollama sent no progress for 1 s (ollama.pull_stall_timeout)"
    wait_for(lambda: [r for r in blob_gets(registry, 100000) if r["state"] == "cut"], 5,
             "the stalled download to be cut")


def test_a_pull_while_ollama_is_fatal_is_unavailable_at_once(crash_looping, wait_for):
    daemon = crash_looping(max_restarts=1)
    daemon.wait_bound()
    with daemon.client(timeout=5.0) as client:
        wait_for(lambda: client.status()["ollama"]["state"] == "FATAL", 20, "FATAL")
        with pytest.raises(Unavailable) as refused:
            list(client.pull("llama3.2:3b"))
    assert not refused.value.retryable
