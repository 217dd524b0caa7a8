"""OllamaClient and get_ollama_client: the old API, never raising for request failures."""

from __future__ import annotations

import threading
import time

import pytest

from ollamad_client import Client, OllamaClient, _legacy, get_ollama_client

LEGACY_KEYS = {"text", "thinking", "success", "response_time", "attempts", "tokens", "error", "model",
               "done_reason", "prompt_tokens", "completion_tokens", "tokens_per_second",
               "error_code"}


@pytest.fixture
def legacy(fake):
    client = OllamaClient(socket=fake.endpoint, request_timeout=5.0)
    yield client
    client.shutdown()


def health_handler(fake, status="healthy", reasons=(), model="llama3.1:8b",
                   installed=("llama3.1:8b", "nomic-embed-text:latest")):
    def handler(request):
        health = {"healthy": status == "healthy", "status": status, "reasons": list(reasons),
                  "ollama": {"state": "RUNNING"}, "gpu": {}}
        if request.op == "health":
            return [request.ok(health)]
        if request.op == "status":
            return [request.ok({"daemon": {"model": model}, "health": health})]
        if request.op == "models":
            return [request.ok({"models": [{"name": n} for n in installed], "loaded": []})]
        return fake.default_handler(request)
    return handler


def test_the_old_constructor_arguments_are_accepted_timeout_is_the_deadline_and_the_rest_warn_once(
        fake, monkeypatch):
    monkeypatch.setattr(_legacy, "_warned", set())
    with pytest.warns(DeprecationWarning) as warned:
        client = OllamaClient("http://localhost:11434", "llama3.1:8b", 10, 3, 8,
                              socket=fake.endpoint)
        OllamaClient("http://localhost:11434", max_retries=3, max_workers=8,
                     socket=fake.endpoint).shutdown()
    # One warning per argument that no longer applies, once per process.
    assert sorted(str(w.message).split("(")[1].split("=")[0] for w in warned) == [
        "base_url", "max_retries", "max_workers"]
    try:
        assert (client.base_url, client.model, client.timeout, client.max_retries,
                client.max_workers) == ("http://localhost:11434", "llama3.1:8b", 10, 3, 8)
        client.generate("x")
    finally:
        client.shutdown()
    (request,) = fake.wait_for(1)
    assert request.args["model"] == "llama3.1:8b"
    assert request.message["timeout"] == 10        # the whole request's deadline now


def test_generate_returns_the_old_dict_on_success(legacy, fake):
    result = legacy.generate("Why?", temperature=0.2, max_tokens=50, system_prompt="Be brief.")
    (request,) = fake.wait_for(1)
    assert request.args == {"prompt": "Why?", "temperature": 0.2, "max_tokens": 50,
                            "system": "Be brief."}
    assert result.keys() == LEGACY_KEYS
    assert result["success"] is True and result["error"] is None and result["error_code"] is None
    assert result["text"] == "echo: Why?" and result["tokens"] == 2 and result["attempts"] == 1
    assert result["response_time"] == 0.25 and result["tokens_per_second"] == 42.0
    assert result["model"] == "llama3.1:8b" and result["done_reason"] == "stop"


def test_generate_uses_the_old_default_temperature_and_passes_extras(legacy, fake):
    legacy.generate("x", model="qwen2:7b", options={"seed": 1}, timeout=3.0)
    (request,) = fake.wait_for(1)
    assert request.args == {"prompt": "x", "temperature": 0.7, "model": "qwen2:7b",
                            "options": {"seed": 1}}
    assert request.message["timeout"] == 3.0


def test_generate_returns_a_failure_dict_with_the_daemons_message(legacy, fake):
    fake.handler = lambda request: [request.error("model_not_found",
                                                  "model 'nope:1b' not found", attempts=1)]
    result = legacy.generate("hi", model="nope:1b")
    assert result.keys() == LEGACY_KEYS
    assert result["success"] is False and result["text"] == "" and result["tokens"] == 0
    assert result["error"] == "model 'nope:1b' not found"
    assert result["error_code"] == "model_not_found" and result["attempts"] == 1
    assert result["model"] == "nope:1b" and result["response_time"] >= 0


def test_a_failure_without_attempts_reports_zero(legacy, fake):
    fake.handler = lambda request: [request.error("busy", "queue full")]
    assert legacy.generate("x")["attempts"] == 0


def test_generate_with_the_daemon_down_fails_fast_without_raising(down_endpoint):
    client = OllamaClient(socket=down_endpoint, connect_timeout=0.3)
    started = time.monotonic()
    result = client.generate("anyone?")
    assert time.monotonic() - started < 2.0
    assert result["success"] is False and result["error_code"] == "unavailable"
    assert "not reachable" in result["error"]
    client.shutdown()


def test_generate_batch_keeps_prompt_order_with_failures(legacy, fake):
    def handler(request):
        if request.op != "batch":
            return fake.default_handler(request)
        items = [{"ok": True, "result": fake.generation_result(f"echo: {p}")} if p != "bad" else
                 {"ok": False, "error": {"code": "backend_error", "message": "runner died",
                                         "retryable": True, "attempts": 3}}
                 for p in request.args["prompts"]]
        return [request.ok({"results": items})]
    fake.handler = handler
    results = legacy.generate_batch(["a", "bad", "c"], temperature=0.0, max_tokens=9)
    assert fake.wait_for(1, op="batch")[0].args == {"prompts": ["a", "bad", "c"], "temperature": 0.0,
                                        "max_tokens": 9}
    assert [r["text"] for r in results] == ["echo: a", "", "echo: c"]
    assert [r["success"] for r in results] == [True, False, True]
    assert results[1]["error"] == "runner died" and results[1]["attempts"] == 3
    assert all(r.keys() == LEGACY_KEYS for r in results)


def test_chat_stream_and_embed(legacy, fake):
    chat = legacy.chat([{"role": "user", "content": "hello"}], system_prompt="Be kind.")
    assert chat["success"] and chat["message"]["content"] == "echo: hello"
    stream = legacy.stream("a b")
    assert list(stream) == ["echo: ", "a ", "b "] and stream.result["text"] == "echo: a b"
    assert stream.result["success"] is True
    embedded = legacy.embed(["xyz"], model="nomic-embed-text")
    assert embedded["success"] and embedded["embeddings"] == [[3.0, 0.5]]


def test_a_failing_stream_ends_quietly_with_a_failure_result(legacy, fake):
    fake.handler = lambda request: [request.chunk("half "),
                                    request.error("backend_error", "cut stream")]
    stream = legacy.stream("x")
    assert list(stream) == ["half "]
    assert stream.result["success"] is False and stream.result["error"] == "cut stream"


def test_embed_failure_is_a_dict(legacy, fake):
    fake.handler = lambda request: [request.error("bad_request", "invalid input type")]
    result = legacy.embed([1, 2])
    assert result["success"] is False and result["error_code"] == "bad_request"
    assert result["embeddings"] == []


def test_health_check_healthy(legacy, fake):
    fake.handler = health_handler(fake)
    health = legacy.health_check()
    assert health["status"] == "healthy" and health["healthy"] is True
    assert health["model"] == "llama3.1:8b" and health["model_available"] is True
    assert health["available_models"] == ["llama3.1:8b", "nomic-embed-text:latest"]
    assert health["error"] is None and health["details"]["ollama"]["state"] == "RUNNING"


def test_health_check_names_a_missing_model_as_degraded(fake):
    fake.handler = health_handler(fake)
    client = OllamaClient(model="qwen2:7b", socket=fake.endpoint)
    try:
        health = client.health_check()
    finally:
        client.shutdown()
    assert health["status"] == "degraded" and health["healthy"] is False
    assert health["model_available"] is False and "qwen2:7b" in health["error"]


def test_a_model_without_a_tag_matches_latest(fake):
    fake.handler = health_handler(fake)
    client = OllamaClient(model="nomic-embed-text", socket=fake.endpoint)
    try:
        assert client.health_check()["model_available"] is True
    finally:
        client.shutdown()


def test_health_check_passes_on_the_daemons_verdict_and_reasons(legacy, fake):
    fake.handler = health_handler(fake, status="unhealthy", reasons=["Ollama is BACKOFF"])
    health = legacy.health_check()
    assert health["status"] == "unhealthy" and health["healthy"] is False
    assert health["error"] == "Ollama is BACKOFF"
    assert legacy.is_available() is False


def test_health_check_with_the_daemon_down(down_endpoint):
    client = OllamaClient(socket=down_endpoint, connect_timeout=0.3)
    health = client.health_check()
    client.shutdown()
    assert health["status"] == "unhealthy" and health["healthy"] is False
    assert health["model_available"] is False and health["available_models"] == []
    assert "not reachable" in health["error"] and health["details"] is None


def test_is_available(legacy, fake, down_endpoint):
    fake.handler = health_handler(fake, status="degraded", reasons=["GPU memory pressure"])
    assert legacy.is_available() is True
    down = OllamaClient(socket=down_endpoint, connect_timeout=0.3)
    started = time.monotonic()
    assert down.is_available() is False
    assert time.monotonic() - started < 2.5
    down.shutdown()


def test_is_available_is_false_when_health_does_not_answer_promptly(legacy, fake):
    fake.handler = lambda request: []
    started = time.monotonic()
    assert legacy.is_available() is False
    assert time.monotonic() - started < 2.5


def test_get_metrics_counts_this_process_and_puts_the_daemons_under_host(
        legacy, fake, down_endpoint, monkeypatch):
    monkeypatch.setattr(_legacy, "_process_metrics", _legacy.ProcessMetrics())
    host = {"total_requests": 300, "successful_requests": 200, "failed_requests": 100,
            "success_rate": 0.667, "average_response_time": 0.5, "queue_depth": 0}

    def answer(request):
        if request.op == "metrics":
            return [request.ok(host)]
        if request.args.get("prompt") == "fails":
            return [request.error("backend_error", "boom")]
        result = fake.generation_result("ok", response_time=0.25)
        if request.op == "batch":
            return [request.ok({"results": [{"ok": True, "result": result}
                                            for _ in request.args["prompts"]]})]
        return [request.ok(result)]
    fake.handler = answer
    legacy.generate("a"), legacy.generate("fails"), legacy.generate_batch(["b", "c"])
    figures = legacy.get_metrics()
    assert {k: figures[k] for k in ("total_requests", "successful_requests", "failed_requests",
                                    "success_rate")} == {
        "total_requests": 4, "successful_requests": 3, "failed_requests": 1, "success_rate": 0.75}
    assert figures["host"] == host
    down = OllamaClient(socket=down_endpoint, connect_timeout=0.3)
    metrics = down.get_metrics()
    down.shutdown()
    assert metrics["total_requests"] == 4 and metrics["host"] is None   # its own figures still
    assert metrics["error_code"] == "unavailable" and metrics["error"]


def test_shutdown_is_idempotent_and_later_calls_fail_softly(legacy):
    legacy.shutdown()
    legacy.shutdown()
    result = legacy.generate("x")
    assert result["success"] is False and result["error_code"] == "unavailable"
    assert legacy.generate_batch(["a", "b"])[1]["error_code"] == "unavailable"


def test_the_modern_client_is_reachable_for_code_moving_on(legacy):
    assert isinstance(legacy.client, Client)


def test_get_ollama_client_is_one_instance_until_shutdown(fake, fresh_singleton):
    first = get_ollama_client(socket=fake.endpoint)
    assert get_ollama_client() is first and get_ollama_client(model="ignored") is first
    assert first.generate("x")["success"]
    first.shutdown()
    second = get_ollama_client(socket=fake.endpoint)
    assert second is not first and second.generate("y")["success"]


def test_get_ollama_client_creation_is_thread_safe(fake, fresh_singleton):
    seen: list[OllamaClient] = []
    barrier = threading.Barrier(16)

    def grab() -> None:
        barrier.wait(timeout=10)
        seen.append(get_ollama_client(socket=fake.endpoint))

    threads = [threading.Thread(target=grab) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(seen) == 16 and len({id(c) for c in seen}) == 1
