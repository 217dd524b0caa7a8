"""The stand-in pulls a model whose name names a registry over HTTP, as Ollama does;
the official client is the judge of the statuses, and the test registry's request log
shows what went over the wire."""

from __future__ import annotations

import json

import ollama
import pytest
import requests

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def registry():
    from ollamad.testing.registry import RegistryProcess
    with RegistryProcess(["library/tiny:v1=100000", "me/other:q4"]) as running:
        yield running


def manifest(registry, repository: str, tag: str) -> dict:
    return requests.get(f"http://{registry.address}/v2/{repository}/manifests/{tag}",
                        timeout=5).json()


def test_a_pull_from_a_registry_shows_each_layer_and_installs_a_model_that_generates(
        standin, registry):
    name = f"{registry.address}/library/tiny:v1"
    wanted = manifest(registry, "library/tiny", "v1")
    blobs = {layer["digest"]: layer["size"] for layer in [*wanted["layers"], wanted["config"]]}
    with ollama.Client(host=standin.url, timeout=TIMEOUT) as client:
        seen = list(client.pull(name, insecure=True, stream=True))
        statuses = [progress.status for progress in seen]
        assert statuses[0] == "pulling manifest"
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        layers = [progress for progress in seen if progress.digest]
        assert {progress.digest for progress in layers} == set(blobs)
        for digest, size in blobs.items():
            lines = [p for p in layers if p.digest == digest]
            assert all(p.status == f"pulling {digest[7:19]}" and p.total == size for p in lines)
            assert lines[-1].completed == size
        assert name in {model.model for model in client.list().models}
        listed = next(m for m in client.list().models if m.model == name)
        assert listed.size == sum(blobs.values())
        assert client.generate(name, "hello from the registry", options={"num_predict": 4}).done
    gets = [r for r in registry.requests() if r["method"] == "GET" and "/blobs/" in r["path"]]
    assert {r["path"].rpartition("/")[2] for r in gets} >= set(blobs)
    assert all(r["state"] == "done" for r in gets)


def test_blobs_already_on_disk_are_not_fetched_again(standin, registry):
    name = f"{registry.address}/me/other:q4"
    with ollama.Client(host=standin.url, timeout=TIMEOUT) as client:
        assert client.pull(name, insecure=True).status == "success"
        fetched = len(registry.requests())
        again = [p for p in client.pull(name, insecure=True, stream=True) if p.digest]
    assert again and all(p.completed == p.total for p in again)
    asked = [r["path"] for r in registry.requests()[fetched:]]
    assert asked == ["/v2/me/other/manifests/q4"], asked


def test_a_model_the_registry_lacks_is_ollamas_missing_manifest(standin, registry):
    name = f"{registry.address}/library/absent:v1"
    with ollama.Client(host=standin.url, timeout=TIMEOUT) as client:
        with pytest.raises(ollama.ResponseError) as streamed:
            list(client.pull(name, insecure=True, stream=True))
        with pytest.raises(ollama.ResponseError) as whole:
            client.pull(name, insecure=True)
    assert streamed.value.error == "pull model manifest: file does not exist"
    assert (whole.value.status_code, whole.value.error) == (
        500, "pull model manifest: file does not exist")


def test_a_registry_that_refuses_connections_is_gos_dial_error(standin, closed_port):
    answer = requests.post(f"{standin.url}/api/pull", timeout=TIMEOUT, json={
        "model": f"127.0.0.1:{closed_port}/library/tiny:v1", "insecure": True})
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"error": f'pull model manifest: Get "http://127.0.0.1:{closed_port}'
                                  f'/v2/library/tiny/manifests/v1": dial tcp 127.0.0.1:'
                                  f'{closed_port}: connect: connection refused'}


def test_without_insecure_a_plain_http_registry_is_spoken_to_over_https(standin, registry):
    answer = requests.post(f"{standin.url}/api/pull", timeout=TIMEOUT, json={
        "model": f"{registry.address}/library/tiny:v1", "stream": False})
    assert answer.status_code == 500
    assert answer.json()["error"] == (
        f'pull model manifest: Get "https://{registry.address}/v2/library/tiny/manifests/v1": '
        "http: server gave HTTP response to HTTPS client")


def test_a_client_that_leaves_mid_blob_stops_the_download(standin, registry_factory, wait_for):
    slow = registry_factory(["library/slow:v1=400000"], rate=100_000)   # ~4 s for the weights
    name = f"{slow.address}/library/slow:v1"
    with requests.post(f"{standin.url}/api/pull", json={"model": name, "insecure": True},
                       stream=True, timeout=TIMEOUT) as answer:
        for line in answer.iter_lines():
            if json.loads(line).get("completed"):
                break   # the weights are coming in
    weights = wait_for(lambda: [r for r in slow.requests() if r["total"] == 400000
                                and r["method"] == "GET"], 5, "the weights' GET")[0]
    cut = wait_for(lambda: next((r for r in slow.requests() if r["path"] == weights["path"]
                                 and r["method"] == "GET" and r["state"] != "sending"), None),
                   3, "the registry to see the download stop")
    assert cut["state"] == "cut" and cut["sent"] < 400000
    wait_for(lambda: not standin.state()["pulls"], 2, "the stand-in to forget the pull")
    tags = requests.get(f"{standin.url}/api/tags", timeout=5).json()["models"]
    assert name not in {model["name"] for model in tags}
