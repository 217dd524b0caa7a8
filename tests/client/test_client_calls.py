"""Client: what each method sends, and what it returns."""

from __future__ import annotations

import json

import pytest

from ollamad_client import (DEFAULT_ENDPOINT, SOCKET_ENV, Client, ErrorCode, OllamadError,
                            TooLarge, Unavailable, error_for, protocol)


def test_every_request_is_protocol_v1_with_a_unique_id(client, fake):
    client.ping()
    client.ping()
    first, second = fake.wait_for(2)
    for request in (first, second):
        assert protocol.decode_request(request.frame).op == "ping"
        assert request.message["v"] == 1 and request.message["stream"] is False
        assert request.message["timeout"] == 5.0
    assert first.id != second.id


def test_generate_sends_only_the_arguments_given(client, fake):
    result = client.generate("Hi", system="Be brief.", temperature=0.2, max_tokens=50,
                             format={"type": "object"}, options={"seed": 7},
                             keep_alive="10m", timeout=9.0)
    (request,) = fake.wait_for(1)
    assert request.op == "generate" and request.message["timeout"] == 9.0
    assert request.args == {"prompt": "Hi", "system": "Be brief.", "temperature": 0.2,
                            "max_tokens": 50, "format": {"type": "object"},
                            "options": {"seed": 7}, "keep_alive": "10m"}
    assert result == fake.generation_result("echo: Hi")


def test_none_means_not_given_and_the_client_model_is_the_default(fake):
    with Client(fake.endpoint, model="qwen2:7b") as client:
        client.generate("a", temperature=None)
        client.generate("b", model="llama3.1:8b")
    first, second = fake.wait_for(2)
    assert first.args == {"prompt": "a", "model": "qwen2:7b"}
    assert second.args == {"prompt": "b", "model": "llama3.1:8b"}


def test_an_unknown_keyword_is_a_type_error_not_a_request(client, fake):
    with pytest.raises(TypeError, match="temprature"):
        client.generate("a", temprature=0.1)
    client.ping()
    assert [r.op for r in fake.wait_for(1)] == ["ping"]


def test_chat_sends_messages_and_returns_the_assistant_message(client, fake):
    messages = [{"role": "user", "content": "hello"}]
    result = client.chat(messages, system="Be kind.")
    (request,) = fake.wait_for(1)
    assert request.op == "chat"
    assert request.args == {"messages": messages, "system": "Be kind."}
    assert result["message"] == {"role": "assistant", "content": "echo: hello"}


def test_stream_yields_pieces_then_holds_the_result(client, fake):
    stream = client.stream("one two three", max_tokens=5)
    pieces = list(stream)
    (request,) = fake.wait_for(1)
    assert request.message["stream"] is True and request.args["max_tokens"] == 5
    assert pieces == ["echo: ", "one ", "two ", "three "]
    assert stream.result["text"] == "echo: one two three"


def test_stream_chat_streams_a_chat(client, fake):
    stream = client.stream_chat([{"role": "user", "content": "hi there"}])
    assert "".join(stream).strip() == "echo: hi there"
    assert stream.result["message"]["content"] == "echo: hi there"
    assert fake.wait_for(1)[0].op == "chat"


def test_nothing_is_sent_until_a_stream_is_iterated(client, fake):
    stream = client.stream("lazy")
    client.ping()
    assert [r.op for r in fake.wait_for(1)] == ["ping"]
    stream.close()
    assert list(stream) == [] and stream.result is None


def test_batch_returns_results_and_errors_in_prompt_order(client, fake):
    def handler(request):
        if request.op != "batch":
            return fake.default_handler(request)
        items = [{"ok": True, "result": fake.generation_result(p)} if i % 2 == 0 else
                 {"ok": False, "error": {"code": "backend_error", "message": f"bad {p}",
                                         "retryable": True, "attempts": 3}}
                 for i, p in enumerate(request.args["prompts"])]
        return [request.ok({"results": items})]
    fake.handler = handler
    results = client.batch(["a", "b", "c"], temperature=0.0)
    (request,) = fake.wait_for(1, op="batch")
    assert request.args == {"prompts": ["a", "b", "c"], "temperature": 0.0}
    assert results[0]["text"] == "a" and results[2]["text"] == "c"
    assert isinstance(results[1], OllamadError) and results[1].code is ErrorCode.BACKEND_ERROR
    assert results[1].message == "bad b" and results[1].attempts == 3


def test_a_long_batch_is_split_into_ops_of_256_when_the_daemon_names_no_limit(client, fake):
    prompts = [f"p{i}" for i in range(600)]
    results = client.batch(prompts)
    assert [r.op for r in fake.wait_for(4)] == ["ping", "batch", "batch", "batch"]
    sizes = [len(r.args["prompts"]) for r in fake.wait_for(3, op="batch")]
    assert sizes == [256, 256, 88]
    assert [r["text"] for r in results] == [f"echo: {p}" for p in prompts]


def test_a_batch_op_that_fails_whole_fails_only_its_own_prompts(client, fake):
    def handler(request):
        if request.op == "batch" and request.args["prompts"][0] == "p256":
            return [request.error("busy", "queue full")]
        return fake.default_handler(request)
    fake.handler = handler
    results = client.batch([f"p{i}" for i in range(300)])
    assert all(isinstance(r, dict) for r in results[:256])
    assert all(isinstance(r, OllamadError) and r.code is ErrorCode.BUSY for r in results[256:])


def test_a_batch_answer_of_the_wrong_length_is_an_internal_error(client, fake):
    fake.handler = lambda request: [request.ok({"results": []} if request.op == "batch" else {})]
    results = client.batch(["a", "b"])
    assert [r.code for r in results] == [ErrorCode.INTERNAL] * 2


def test_an_empty_batch_sends_nothing(client, fake):
    assert client.batch([]) == []
    client.ping()
    assert [r.op for r in fake.wait_for(1)] == ["ping"]


def test_embed_returns_one_vector_per_input(client, fake):
    assert client.embed(["one", "three"], model="nomic-embed-text") == [[3.0, 0.5], [5.0, 0.5]]
    assert client.embed("four") == [[4.0, 0.5]]
    first, second = fake.wait_for(2, op="embed")
    assert first.args == {"input": ["one", "three"], "model": "nomic-embed-text"}
    assert second.args == {"input": "four"}


@pytest.mark.parametrize("op", ["models", "health", "status", "metrics", "gpu", "ping"])
def test_queries_send_their_op_without_arguments(client, fake, op):
    assert getattr(client, op)(timeout=2.0) == {"op": op, "args": {}}
    (request,) = fake.wait_for(1)
    assert request.op == op and request.message["timeout"] == 2.0


def test_restart_is_an_admin_op_with_an_optional_reason(client, fake):
    client.restart("weights swapped")
    client.restart()
    first, second = fake.wait_for(2)
    assert (first.op, first.args) == ("restart", {"reason": "weights swapped"})
    assert (second.op, second.args) == ("restart", {})


def test_request_sends_any_op(client, fake):
    result = client.request("status", {"verbose": True})
    assert result == {"op": "status", "args": {"verbose": True}}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_error_code_raises_its_class(client, fake, code):
    fake.handler = lambda request: [request.error(code.value, "nope", attempts=2)]
    with pytest.raises(OllamadError) as caught:
        client.generate("x")
    assert type(caught.value) is type(error_for(code, ""))
    assert caught.value.code is code and caught.value.message == "nope"
    assert caught.value.retryable is code.retryable and caught.value.attempts == 2


def test_an_unknown_error_code_from_a_newer_daemon_is_internal(client, fake):
    fake.handler = lambda request: [json.dumps(
        {"v": 1, "id": request.id, "ok": False,
         "error": {"code": "brand_new", "message": "?"}}).encode()]
    with pytest.raises(OllamadError) as caught:
        client.ping()
    assert caught.value.code is ErrorCode.INTERNAL


def test_an_oversized_request_is_refused_without_sending(fake):
    with Client(fake.endpoint, max_message_bytes=1000) as client:
        with pytest.raises(TooLarge, match="limit is 1000"):
            client.generate("x" * 2000)
        client.ping()
    assert [r.op for r in fake.wait_for(1)] == ["ping"]


def test_a_closed_client_refuses_calls(fake):
    client = Client(fake.endpoint)
    client.ping()
    client.close()
    client.close()
    with pytest.raises(Unavailable, match="closed"):
        client.ping()
    assert client.closed


def test_timeouts_are_validated(fake):
    with pytest.raises(ValueError):
        Client(fake.endpoint, timeout=0)
    with Client(fake.endpoint) as client, pytest.raises(ValueError):
        client.generate("x", timeout=4000)


def test_the_endpoint_defaults_to_the_environment_then_the_standard_path(monkeypatch, fake):
    monkeypatch.delenv(SOCKET_ENV, raising=False)
    assert Client().endpoint == DEFAULT_ENDPOINT == "ipc:///run/ollamad/ollamad.sock"
    monkeypatch.setenv(SOCKET_ENV, fake.endpoint)
    with Client() as client:
        assert client.endpoint == fake.endpoint and client.ping()["op"] == "ping"


def test_a_malformed_endpoint_is_a_clear_error():
    with Client("nonsense://here") as client, pytest.raises(ValueError, match="nonsense"):
        client.ping()


def daemon_with_limits(fake, **limits):
    """A handler whose ``ping`` reports the daemon's limits (as a current daemon does)."""
    def handler(request):
        if request.op == "ping":
            return [request.ok({"protocol": 1, "version": "test", "pid": 1,
                                "max_message_bytes": 4194304, "max_timeout": 3600.0, **limits})]
        return fake.default_handler(request)
    return handler


def test_batch_splits_by_the_max_batch_the_daemon_reports_asked_once(client, fake):
    fake.handler = daemon_with_limits(fake, max_batch=100, max_embed_inputs=10)
    prompts = [f"p{i}" for i in range(250)]
    assert [r["text"] for r in client.batch(prompts)] == [f"echo: {p}" for p in prompts]
    assert [r["text"] for r in client.batch(prompts[:150])] == [f"echo: p{i}" for i in range(150)]
    sizes = [len(r.args["prompts"]) for r in fake.wait_for(5, op="batch")]
    assert sizes == [100, 100, 50, 100, 50]
    assert [r.op for r in fake.received].count("ping") == 1  # cached per client


def test_embed_splits_by_the_max_embed_inputs_the_daemon_reports(client, fake):
    fake.handler = daemon_with_limits(fake, max_batch=256, max_embed_inputs=2)
    inputs = ["a", "bb", "ccc", "dddd", "eeeee"]
    assert client.embed(inputs) == [[float(len(s)), 0.5] for s in inputs]
    assert [r.args["input"] for r in fake.wait_for(3, op="embed")] == [
        ["a", "bb"], ["ccc", "dddd"], ["eeeee"]]


def test_embed_of_one_input_needs_no_ping(client, fake):
    client.embed("one")
    client.embed(["one"])
    assert [r.op for r in fake.wait_for(2)] == ["embed", "embed"]


def test_a_batch_whose_ping_fails_gives_every_prompt_that_error_and_asks_again(client, fake):
    fake.handler = lambda request: [request.error("shutting_down", "bye")]
    results = client.batch(["a", "b"])
    assert [r.code for r in results] == [ErrorCode.SHUTTING_DOWN] * 2
    assert [r.op for r in fake.received] == ["ping"]  # no batch op was sent
    fake.handler = daemon_with_limits(fake, max_batch=1)
    assert [r["text"] for r in client.batch(["a", "b"])] == ["echo: a", "echo: b"]
    assert [r.op for r in fake.wait_for(4)] == ["ping", "ping", "batch", "batch"]


def test_every_request_names_the_app_given_or_from_the_environment_or_the_program(
        fake, monkeypatch):
    with Client(fake.endpoint, app="voice-eval") as named:
        named.ping()
    monkeypatch.setenv("OLLAMAD_APP", "data cleaning!")
    with Client(fake.endpoint) as from_env:
        from_env.ping()
    monkeypatch.delenv("OLLAMAD_APP")
    monkeypatch.setattr("sys.argv", ["/srv/apps/skill demand.py"])
    with Client(fake.endpoint) as from_program:
        from_program.ping()
    apps = [r.message["app"] for r in fake.wait_for(3)]
    # Characters an app name may not have become "-".
    assert apps == ["voice-eval", "data-cleaning-", "skill-demand.py"]
    with pytest.raises(ValueError, match="app must be"):
        Client(fake.endpoint, app="no spaces")


def test_a_deadline_nobody_chose_is_left_to_the_daemon_and_a_chosen_one_is_sent(fake):
    with Client(fake.endpoint) as client:
        client.generate("default")                          # the daemon's (or the profile's)
        client.generate("profiled", profile="voice_eval")
        client.generate("chosen", profile="voice_eval", timeout=7.0)
    with Client(fake.endpoint, timeout=9.0) as client:
        client.generate("constructor", profile="voice_eval")
    default, profiled, chosen, constructor = fake.wait_for(4)
    assert "timeout" not in default.message and "timeout" not in profiled.message
    assert profiled.args == {"prompt": "profiled", "profile": "voice_eval"}
    assert chosen.message["timeout"] == 7.0 and constructor.message["timeout"] == 9.0
    assert protocol.decode_request(default.frame).timeout_given is False


def test_priority_and_profile_go_with_generation_batch_and_embed(client, fake):
    client.generate("a", priority="batch", profile="data_cleaning")
    client.batch(["b"], priority="interactive")
    client.embed("c", priority="batch", profile="search")
    generate, batch, embed = fake.wait_for(3, exclude=("ping",))
    assert generate.args == {"prompt": "a", "priority": "batch", "profile": "data_cleaning"}
    assert batch.args == {"prompts": ["b"], "priority": "interactive"}
    assert embed.args == {"input": "c", "priority": "batch", "profile": "search"}


def test_a_busy_refusal_carries_its_retry_hint(client, fake):
    fake.handler = lambda request: [protocol.encode_error(request.id, protocol.Error.of(
        ErrorCode.BUSY, "this user has 4 items queued", retry_after=2.5))]
    with pytest.raises(OllamadError) as busy:
        client.generate("x")
    assert busy.value.code is ErrorCode.BUSY and busy.value.retry_after == 2.5
    assert error_for("busy", "m", retry_after=1.0).retry_after == 1.0
