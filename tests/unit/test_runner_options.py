"""Runner options are the daemon's: configured per model, refused from clients that differ."""

import pytest

from ollamad import config
from ollamad.ollama import names
from ollamad.ollama.runner import RunnerPolicy
from ollamad.retry import OllamaFailure


@pytest.mark.parametrize("given, expected", [
    ("llama3", "llama3:latest"), ("Llama3:LATEST", "llama3:latest"),
    ("library/llama3", "llama3:latest"), ("registry.ollama.ai/library/llama3:8b", "llama3:8b"),
    ("me/model:q4", "me/model:q4"), ("bad name", None), ("", None),
    # A registry of its own keeps its host and namespace (name.go DisplayShortest).
    ("127.0.0.1:5000/library/tiny:v1", "127.0.0.1:5000/library/tiny:v1"),
    ("Example.com/Me/Model", "example.com/me/model:latest"),
    ("a/b/c/d", None), ("my.namespace/model", None), ("http://host/ns/model", None),
])
def test_model_names_compare_as_ollama_compares_them(given, expected):
    assert names.canonical(given) == expected


def test_configured_options_go_with_every_request_and_equal_ones_pass():
    policy = RunnerPolicy(context_length=4096, per_model={"llama3:latest": {"num_batch": 256}})
    assert policy.apply("llama3", {"temperature": 0.2}) == {"temperature": 0.2, "num_ctx": 4096,
                                                             "num_batch": 256}
    assert policy.apply("llama3:latest", {"num_ctx": 4096, "num_batch": 256})["num_ctx"] == 4096
    assert policy.apply("other:7b", {}) == {"num_ctx": 4096}
    assert RunnerPolicy().apply("other:7b", {"seed": 1}) == {"seed": 1}   # all automatic


@pytest.mark.parametrize("options, named, source", [
    ({"num_ctx": 8192}, "num_ctx=8192", "llama3:latest runs with num_ctx=4096 (set by "
                                        "ollama.context_length)"),
    ({"num_batch": 64}, "num_batch=64", 'num_batch=256 (set by [runner_options."llama3:latest"])'),
    ({"num_gpu": 0}, "num_gpu=0", "Ollama's default num_gpu (not configured)"),
    ({"use_mmap": False}, "use_mmap=false", "default use_mmap"),
])
def test_a_differing_runner_option_is_refused_naming_option_and_configured_value(
        options, named, source):
    policy = RunnerPolicy(context_length=4096, per_model={"llama3:latest": {"num_batch": 256}})
    with pytest.raises(OllamaFailure) as refused:
        policy.apply("llama3", options)
    assert refused.value.code.value == "bad_request" and not refused.value.retryable
    assert named in refused.value.message and source in refused.value.message
    assert "ollama.client_runner_options" in refused.value.message


def test_a_single_tenant_host_lets_the_client_choose():
    policy = RunnerPolicy(context_length=4096, clients_may_set=True)
    assert policy.apply("llama3", {"num_ctx": 8192, "num_gpu": 0}) == {"num_ctx": 8192,
                                                                       "num_gpu": 0}


def write(tmp_path, text):
    path = tmp_path / "ollamad.toml"
    path.write_text(text)
    return path


def test_runner_option_tables_are_keyed_by_canonical_name(tmp_path):
    path = write(tmp_path, '[runner_options."Llama3"]\nnum_ctx = 8192\nuse_mmap = false\n')
    assert config.load(path, env={}).runner_options == {
        "llama3:latest": {"num_ctx": 8192, "use_mmap": False}}


@pytest.mark.parametrize("text, message", [
    ('[runner_options."llama3"]\ntemperature = 0.1\n', "unknown runner option"),
    ('[runner_options."llama3"]\nnum_ctx = 0\n', "must be an integer from 1"),
    ('[runner_options."llama3"]\nuse_mmap = 1\n', "must be true or false"),
    ('[runner_options."bad name"]\nnum_ctx = 1\n', "not a valid model name"),
    ('[runner_options."llama3"]\nnum_ctx = 1\n[runner_options."llama3:latest"]\nnum_ctx = 2\n',
     "configured twice"),
    ('runner_options = 3\n', "expected tables"),
])
def test_bad_runner_option_tables_are_startup_errors_naming_the_key(tmp_path, text, message):
    with pytest.raises(config.ConfigError) as error:
        config.load(write(tmp_path, text), env={})
    assert message in str(error.value) and "runner_options" in str(error.value)
