"""The request path end to end: real daemon, real stand-in child, real client."""

from __future__ import annotations

import json
import threading
import time

import pytest

from ollamad_client import OllamadError


def test_legacy_generate_returns_the_old_dict(shared_daemon):
    daemon = shared_daemon
    client = daemon.legacy()
    try:
        result = client.generate("Why is the sky blue?", temperature=0.2, max_tokens=50,
                                 system_prompt="Be brief.")
    finally:
        client.shutdown()
    assert {"text", "success", "response_time", "attempts", "tokens", "error"} <= result.keys()
    assert result["success"] is True and result["error"] is None
    assert result["text"] and result["tokens"] > 0 and result["attempts"] == 1
    sent = daemon.sent("Why is the sky blue?")
    assert sent["system"] == "Be brief."
    assert sent["options"]["temperature"] == 0.2 and sent["options"]["num_predict"] == 50


def test_503_then_success_takes_two_attempts(daemon):
    daemon.set_fault("busy", count=1)
    with daemon.client() as client:
        result = client.generate("retry me")
    assert result["attempts"] == 2 and result["text"]


def test_missing_model_is_one_attempt_and_a_clear_error(shared_daemon):
    daemon = shared_daemon
    client = daemon.legacy()
    try:
        result = client.generate("hi", model="no-such-model:1b")
    finally:
        client.shutdown()
    assert result["success"] is False and result["attempts"] == 1
    assert result["error_code"] == "model_not_found"
    assert result["error"] == "model 'no-such-model:1b' not found"


def test_a_stream_that_stalls_longer_than_the_attempt_timeout_is_retried_before_the_deadline(
        daemon_factory):
    # Ollama sends one token, then nothing: without the per-attempt limit the one
    # attempt would run into the 6 s deadline.
    daemon = daemon_factory({"attempt_timeout": 0.5, "max_attempts": 2,
                             "ollama": {"probe_interval": 60.0}})
    daemon.set_fault("hang", after_tokens=1)
    started = time.monotonic()
    with daemon.client() as client, pytest.raises(OllamadError) as err:
        client.generate("stuck", timeout=6.0)
    elapsed = time.monotonic() - started
    assert err.value.code.value == "timeout" and err.value.attempts == 2
    assert "sent nothing for 0.5 s" in err.value.message
    assert elapsed < 3.0


def test_a_first_chunk_slower_than_the_attempt_timeout_is_waited_for(daemon_factory):
    # A long prompt's prefill (or a wait for a slot) comes before the first chunk: it is
    # bounded by the deadline, not cut by the per-attempt time-out and started again.
    daemon = daemon_factory({"attempt_timeout": 0.5, "ollama": {"probe_interval": 60.0}},
                            env={"OLLAMAD_STANDIN_PROMPT_RATE": "100"})
    prompt = " ".join(["word"] * 150)   # 1.5 s of prefill at 100 tokens/s
    with daemon.client() as client:
        result = client.generate(prompt, max_tokens=4, timeout=10.0)
    assert result["attempts"] == 1 and result["prompt_eval_duration_ns"] >= 1e9


def test_the_deadline_is_answered_even_while_ollama_hangs(daemon_factory):
    daemon = daemon_factory({"attempt_timeout": 30.0})
    daemon.set_fault("hang")
    started = time.monotonic()
    with daemon.client() as client, pytest.raises(OllamadError) as err:
        client.generate("stuck", timeout=1.0)
    assert err.value.code.value == "timeout" and time.monotonic() - started < 1.5


def test_batch_answers_in_prompt_order_with_partial_failures(daemon_factory):
    daemon = daemon_factory({"max_attempts": 1})
    prompts = [f"prompt number {i}" for i in range(6)]
    with daemon.client() as client:
        expected = [client.generate(p)["text"] for p in prompts]
        daemon.set_fault("runner_terminated", count=2)
        results = client.batch(prompts)
    failed = [r for r in results if isinstance(r, OllamadError)]
    assert len(results) == 6 and len(failed) == 2
    # Ollama's own words (v0.33), verbatim, and the code that says "Ollama failed".
    assert all(e.message == "llama-server process has terminated: exit status 2"
               and e.code.value == "backend_error" for e in failed)
    for result, text in zip(results, expected):
        if not isinstance(result, OllamadError):
            assert result["text"] == text


def test_legacy_generate_batch_keeps_order(shared_daemon):
    daemon = shared_daemon
    client = daemon.legacy()
    try:
        prompts = ["alpha", "beta", "gamma"]
        batch = client.generate_batch(prompts, temperature=0.0)
        single = [client.generate(p, temperature=0.0)["text"] for p in prompts]
    finally:
        client.shutdown()
    assert [r["text"] for r in batch] == single and all(r["success"] for r in batch)


def test_sixteen_requests_reach_ollama_eight_at_a_time(daemon_factory):
    daemon = daemon_factory({"ollama": {"probe_interval": 60.0}},
                            env={"OLLAMAD_STANDIN_TOKEN_DELAY": "0.02"})
    daemon.quiesce()
    with daemon.client(timeout=60.0) as client:
        results = client.batch([f"concurrent {i}" for i in range(16)], max_tokens=20)
    assert all(not isinstance(r, OllamadError) for r in results)
    assert daemon.standin_state()["stats"]["max_generations_in_flight"] == 8


def test_streaming_pieces_add_up_to_the_result(shared_daemon):
    daemon = shared_daemon
    with daemon.client() as client:
        stream = client.stream("tell me a story", max_tokens=30)
        pieces = list(stream)
        whole = client.generate("tell me a story", max_tokens=30)
    assert len(pieces) > 1 and "".join(pieces) == stream.result["text"] == whole["text"]


def test_chat_embed_and_models(shared_daemon):
    daemon = shared_daemon
    with daemon.client() as client:
        chat = client.chat([{"role": "user", "content": "hello"}], system="Be kind.")
        vectors = client.embed(["one", "two"], model="nomic-embed-text")
        models = client.models()
    assert chat["message"]["role"] == "assistant" and chat["message"]["content"] == chat["text"]
    assert len(vectors) == 2 and len(vectors[0]) > 0
    assert "llama3.1:8b" in {m["name"] for m in models["models"]}
    sent = daemon.sent("hello")
    assert sent["messages"][0] == {"role": "system", "content": "Be kind."}


def test_ollama_knobs_pass_through(shared_daemon):
    daemon = shared_daemon
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    with daemon.client() as client:
        result = client.generate("extract", format=schema, keep_alive="10m",
                                 options={"seed": 7, "stop": ["\n"], "top_k": 5})
    sent = daemon.sent("extract")
    assert sent["format"] == schema and sent["keep_alive"] == "10m"
    assert sent["options"]["seed"] == 7 and sent["options"]["top_k"] == 5
    # Runner options are the daemon's: the configured context goes with every request.
    assert sent["options"]["num_ctx"] == 4096
    assert "name" in json.loads(result["text"])


def test_runaway_generation_is_capped(daemon_factory):
    daemon = daemon_factory({"max_tokens_cap": 5})
    with daemon.client() as client:
        result = client.generate("go on forever", max_tokens=1000)
    assert result["completion_tokens"] <= 5 and result["done_reason"] == "length"


def test_bad_arguments_are_answered_without_reaching_ollama(daemon_factory):
    # Probes are generations too: keep them out of the count.
    daemon = daemon_factory({"ollama": {"probe_interval": 60.0}})
    daemon.quiesce()
    with daemon.client() as client:
        for op, args in [("generate", {}), ("generate", {"prompt": 3}),
                         ("generate", {"prompt": "x", "max_tokens": -1}),
                         ("chat", {"messages": [{"role": "user"}]}), ("batch", {"prompts": []}),
                         ("embed", {"input": [1, 2]})]:
            with pytest.raises(OllamadError) as err:
                client.request(op, args)
            assert err.value.code.value == "bad_request", (op, args)
    assert daemon.standin_state()["stats"]["completed_generations"] == 0


def test_a_full_queue_answers_busy(daemon_factory):
    daemon = daemon_factory({"workers": 1, "queue_size": 1, "ollama": {"probe_interval": 60.0}})
    daemon.set_fault("hang")
    errors: list[OllamadError] = []

    def call():
        with daemon.client() as client:
            try:
                client.generate("wait", timeout=1.5)
            except OllamadError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    codes = sorted(e.code.value for e in errors)
    assert codes.count("busy") >= 1 and all(e.retryable for e in errors)


def test_metrics_count_what_happened(daemon):
    with daemon.client() as client:
        client.generate("one")
        with pytest.raises(OllamadError):
            client.generate("two", model="missing")
        metrics = client.metrics()
    assert metrics["total_requests"] >= 2 and metrics["failed_requests"] >= 1
    assert 0 < metrics["success_rate"] < 1
    assert metrics["latency"]["p50"] > 0 and metrics["ops"]["generate"]["count"] >= 2
    assert {"queue_depth", "in_flight", "tokens_per_second", "average_response_time"} <= metrics.keys()


def test_a_runner_crash_is_retried_unless_pieces_already_reached_the_client(daemon):
    with daemon.client() as client:
        daemon.set_fault("crash_mid_stream", count=1, after_tokens=2)
        retried = client.generate("survives a crash", max_tokens=10)
        daemon.set_fault("crash_mid_stream", count=1, after_tokens=2)
        stream = client.stream("cut short", max_tokens=10)
        pieces = []
        with pytest.raises(OllamadError) as err:
            for piece in stream:
                pieces.append(piece)
    assert retried["attempts"] == 2 and retried["text"]
    # A retry would repeat what the client already printed: the cut is final.
    assert len(pieces) == 2 and err.value.code.value == "backend_error"
    assert err.value.message.startswith("an error was encountered while running the model")
