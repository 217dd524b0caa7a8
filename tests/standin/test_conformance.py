"""The official `ollama` Python client, as the judge of the stand-in's answers."""

from __future__ import annotations

import ollama
import pytest

MODEL = "llama3.1:8b"
TIMEOUT = 10.0


@pytest.fixture
def client(standin):
    with ollama.Client(host=standin.url, timeout=TIMEOUT) as judge:
        yield judge


def test_list_names_the_default_models(client):
    names = {model.model for model in client.list().models}
    assert {"llama3.1:8b", "llama3.2:1b", "nomic-embed-text:latest"} <= names
    llama = next(model for model in client.list().models if model.model == MODEL)
    assert llama.details.family == "llama" and llama.details.parameter_size == "8.0B"
    assert llama.size > 0 and len(llama.digest) == 64 and llama.modified_at is not None


def test_show_has_model_info(client):
    shown = client.show(MODEL)
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 131072
    assert shown.details.quantization_level == "Q4_K_M"
    assert "<|eot_id|>" in shown.parameters and shown.template
    assert shown.capabilities == ["completion", "tools"]


def test_generate_streamed_and_not_give_the_same_text(client):
    whole = client.generate(MODEL, "Why is the sky blue?", options={"temperature": 0})
    parts = list(client.generate(MODEL, "Why is the sky blue?", options={"temperature": 0},
                                 stream=True))
    assert whole.done and whole.done_reason == "stop" and whole.response
    assert "".join(part.response for part in parts) == whole.response
    assert [part.done for part in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count == whole.eval_count == len(parts) - 1
    assert whole.context and whole.total_duration >= whole.eval_duration > 0


def test_chat_streamed_and_not_give_the_same_text(client):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a colour."}]
    whole = client.chat(MODEL, messages=messages)
    parts = list(client.chat(MODEL, messages=messages, stream=True))
    assert whole.message.role == "assistant" and whole.message.content
    assert "".join(part.message.content for part in parts) == whole.message.content
    assert parts[-1].done and parts[-1].done_reason == "stop"
    assert whole.prompt_eval_count > 0 and whole.eval_count == len(parts) - 1


def test_ps_reports_a_loaded_model_with_vram(client):
    client.generate(MODEL, "")  # load
    loaded = {model.model: model for model in client.ps().models}
    assert loaded[MODEL].size_vram == loaded[MODEL].size > 0
    assert loaded[MODEL].expires_at is not None and loaded[MODEL].details.family == "llama"


def test_embed_is_deterministic_and_normalised(client):
    first = client.embed("nomic-embed-text", input=["alpha", "beta"])
    again = client.embed("nomic-embed-text", input="alpha")
    assert len(first.embeddings) == 2 and len(first.embeddings[0]) == 768
    assert again.embeddings[0] == first.embeddings[0] != first.embeddings[1]
    assert abs(sum(x * x for x in first.embeddings[0]) - 1) < 1e-3
    assert first.prompt_eval_count == 2
    legacy = client.embeddings("nomic-embed-text", prompt="alpha")
    assert list(legacy.embedding) == list(first.embeddings[0])


def test_pull_streams_statuses_to_success(client):
    statuses = [progress.status for progress in client.pull(MODEL, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses and any(
        status.startswith("pulling ") and len(status) == 20 for status in statuses)
    assert client.pull(MODEL).status == "success"


def test_pull_of_a_model_the_registry_lacks_fails(client):
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.pull("no-such-model", stream=True))
    assert streamed.value.status_code == -1
    assert streamed.value.error == "pull model manifest: file does not exist"
    with pytest.raises(ollama.ResponseError) as whole:
        client.pull("no-such-model")
    assert (whole.value.status_code, whole.value.error) == (
        500, "pull model manifest: file does not exist")


@pytest.mark.parametrize("call", [
    lambda c: c.generate("llama3.2", "hi"),
    lambda c: c.chat("llama3.2", messages=[{"role": "user", "content": "hi"}]),
    lambda c: c.embed("llama3.2", input="hi"),
    lambda c: c.show("llama3.2"),
])
def test_unknown_model_is_404(client, call):
    with pytest.raises(ollama.ResponseError) as error:
        call(client)
    assert (error.value.status_code, error.value.error) == (404, "model 'llama3.2' not found")


def test_chat_without_model_is_400(client):
    # The client refuses an empty model itself; send the request through its transport.
    with pytest.raises(ollama.ResponseError) as error:
        client._request(ollama.ChatResponse, "POST", "/api/chat",
                        json={"messages": [{"role": "user", "content": "hi"}]})
    assert (error.value.status_code, error.value.error) == (400, "model is required")


def test_bad_option_type_is_500(client):
    with pytest.raises(ollama.ResponseError) as error:
        client.generate(MODEL, "hi", options={"temperature": "hot"})
    assert (error.value.status_code, error.value.error) == (
        500, 'option "temperature" must be of type float32')


def test_busy_is_503_with_the_exact_text(ollama_standin):
    ollama_standin.set_fault("busy", count=1)
    with ollama.Client(host=ollama_standin.url, timeout=TIMEOUT) as client:
        with pytest.raises(ollama.ResponseError) as error:
            client.generate(MODEL, "hi")
        assert (error.value.status_code, error.value.error) == (
            503, "server busy, please try again.  maximum pending requests exceeded")
        assert client.generate(MODEL, "hi").done


def test_error_after_a_partial_stream_has_status_minus_one(ollama_standin):
    ollama_standin.set_fault("crash_mid_stream", count=1, after_tokens=3)
    received = []
    with ollama.Client(host=ollama_standin.url, timeout=TIMEOUT) as client:
        with pytest.raises(ollama.ResponseError) as error:
            for part in client.generate(MODEL, "hi", stream=True):
                received.append(part.response)
    assert len(received) == 3
    assert error.value.status_code == -1
    assert error.value.error == "an error was encountered while running the model: unexpected EOF"
