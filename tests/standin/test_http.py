"""What the official client hides: status codes, headers, framing, raw error texts."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
import requests

MODEL = "llama3.1:8b"
TIMEOUT = 10.0
JSON_UTF8 = "application/json; charset=utf-8"


def post(standin, path: str, body=None, raw: bytes | None = None) -> requests.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(standin.url + path, data=data, timeout=TIMEOUT)


def lines(response: requests.Response) -> list[dict]:
    return [json.loads(line) for line in response.content.splitlines()]


def test_root_answers_get_and_head(standin):
    got = requests.get(standin.url + "/", timeout=TIMEOUT)
    assert (got.status_code, got.text) == (200, "Ollama is running")
    assert got.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "Server" not in got.headers and "Date" in got.headers
    head = requests.head(standin.url + "/", timeout=TIMEOUT)
    assert (head.status_code, head.content, head.headers["Content-Length"]) == (200, b"", "17")


def test_version_tags_and_ps_are_json(standin):
    version = requests.get(standin.url + "/api/version", timeout=TIMEOUT)
    assert version.headers["Content-Type"] == JSON_UTF8
    assert version.content == b'{"version":"0.33.0"}'
    tags = requests.get(standin.url + "/api/tags", timeout=TIMEOUT).json()
    assert set(tags["models"][0]) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert isinstance(requests.get(standin.url + "/api/ps", timeout=TIMEOUT).json()["models"], list)


def test_wrong_method_is_405_and_unknown_path_404(standin):
    wrong = requests.get(standin.url + "/api/generate", timeout=TIMEOUT)
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")
    assert wrong.headers["Content-Type"] == "text/plain"
    missing = requests.get(standin.url + "/api/nothing", timeout=TIMEOUT)
    assert (missing.status_code, missing.text) == (404, "404 page not found")


def test_streams_are_chunked_ndjson_flushed_per_object(standin):
    connection = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=TIMEOUT)
    try:
        connection.request("POST", "/api/generate",
                           body=json.dumps({"model": MODEL, "prompt": "Tell me"}))
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/x-ndjson"
        assert response.getheader("Transfer-Encoding") == "chunked"
        objects = [json.loads(line) for line in response.read().splitlines()]
    finally:
        connection.close()
    assert all(not obj["done"] and "context" not in obj for obj in objects[:-1])
    assert set(objects[0]) == {"model", "created_at", "response", "done"}
    final = objects[-1]
    assert final["done"] and final["response"] == "" and final["done_reason"] == "stop"
    assert list(final)[:6] == ["model", "created_at", "response", "done", "done_reason", "context"]


def test_non_streamed_answers_are_one_json_object(standin):
    answer = post(standin, "/api/chat", {"model": MODEL, "stream": False,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert answer.headers["Content-Type"] == JSON_UTF8
    assert list(answer.json()) == [
        "model", "created_at", "message", "done", "done_reason", "total_duration",
        "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
        "eval_duration"]


@pytest.mark.parametrize("path, status, message", [
    ("/api/generate", 404, "model '' not found"),
    ("/api/embed", 404, "model '' not found"),
    ("/api/chat", 400, "model is required"),
    ("/api/show", 400, "model is required"),
])
def test_missing_model(standin, path, status, message):
    answer = post(standin, path, {})
    assert (answer.status_code, answer.json()) == (status, {"error": message})
    assert answer.headers["Content-Type"] == JSON_UTF8


@pytest.mark.parametrize("raw, message", [
    (b"", "missing request body"),
    (b"  \n", "missing request body"),
    (b"{bad", "invalid character 'b' looking for beginning of object key string"),
    (b'{"model": "llama3.1:8b", "stream": "no"}',
     "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"),
])
def test_bad_bodies_are_400(standin, raw, message):
    answer = post(standin, "/api/generate", raw=raw)
    assert (answer.status_code, answer.json()) == (400, {"error": message})


def test_embed_rejects_non_string_input(standin):
    answer = post(standin, "/api/embed", {"model": "nomic-embed-text", "input": [1, 2]})
    assert (answer.status_code, answer.json()) == (400, {"error": "invalid input type"})


def test_embedding_only_model_cannot_generate(standin):
    answer = post(standin, "/api/generate", {"model": "nomic-embed-text", "prompt": "hi"})
    assert (answer.status_code, answer.json()) == (
        400, {"error": '"nomic-embed-text" does not support generate'})


def test_invalid_format_is_a_runner_error(standin):
    answer = post(standin, "/api/generate", {"model": MODEL, "prompt": "hi", "format": "yaml"})
    assert answer.status_code == 500
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == (
        'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object')


@pytest.mark.parametrize("keep_alive", ["300", "-1"])
def test_keep_alive_without_unit_is_400(standin, keep_alive):
    answer = post(standin, "/api/generate",
                  {"model": MODEL, "prompt": "", "keep_alive": keep_alive})
    assert (answer.status_code, answer.json()) == (
        400, {"error": f'time: missing unit in duration "{keep_alive}"'})


def test_trailing_slash_redirects(standin):
    answer = requests.get(standin.url + "/api/tags/", timeout=TIMEOUT, allow_redirects=False)
    assert (answer.status_code, answer.headers["Location"]) == (301, "/api/tags")


def test_keep_alive_connection_serves_many_requests(standin):
    with requests.Session() as session:
        for _ in range(5):
            assert session.get(standin.url + "/", timeout=TIMEOUT).status_code == 200
    assert standin.state()["stats"]["in_flight"] == 0


def test_accepted_sockets_have_nodelay(standin):
    # Round trips on one keep-alive connection stay far below Nagle's ~40 ms.
    connection = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=TIMEOUT)
    try:
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        for _ in range(20):
            connection.request("POST", "/api/generate",
                               body=b'{"model":"llama3.1:8b","prompt":"x","stream":false}')
            assert connection.getresponse().read()
        assert (time.perf_counter() - started) / 20 < 0.03
    finally:
        connection.close()
