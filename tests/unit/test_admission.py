"""Admission and its config: tenants, lanes, profiles, deadlines, the model policy."""

from __future__ import annotations

import pwd

import pytest

from ollamad import config
from ollamad.config import ConfigError
from ollamad.retry import OllamaFailure
from ollamad.scheduling import (BATCH, INTERACTIVE, Tenant, admission_from_config, limit_book)
from ollamad_client.protocol import ErrorCode, Request

PROFILES = """
model = "llama3.1:8b"
[tenants]
max_timeout = 30
[user_limits."1234"]
max_timeout = 120
[profiles.voice_eval]
temperature = 0.3
max_tokens = 400
priority = "interactive"
timeout = 10
options = {top_k = 5, seed = 1}
[profiles.cleaning]
temperature = 0.1
priority = "batch"
model = "qwen3:0.6b"
"""


def load(tmp_path, text: str) -> config.Config:
    path = tmp_path / "ollamad.toml"
    path.write_text(text)
    return config.load(path, env={})


@pytest.fixture
def admission(tmp_path):
    return admission_from_config(load(tmp_path, PROFILES), loaded=lambda: {"llama3.2:1b"})


def request(op="generate", timeout=None, app="voice", **args) -> Request:
    return Request("r1", op, args, timeout or 60.0, app=app, timeout_given=timeout is not None)


def test_the_tenant_is_the_proven_uid_and_the_declared_app(admission):
    assert admission.ticket(request(prompt="x"), uid=1000).tenant == Tenant(1000, "voice")
    assert admission.ticket(request(prompt="x", app=None), uid=None).tenant == Tenant(None, "unnamed")


def test_the_lane_is_the_requests_then_the_profiles_then_the_ops(admission):
    assert admission.ticket(request(prompt="x"), 0).lane == INTERACTIVE
    assert admission.ticket(request("batch", prompts=["x"]), 0).lane == BATCH
    assert admission.ticket(request(prompt="x", profile="cleaning"), 0).lane == BATCH
    assert admission.ticket(request(prompt="x", profile="cleaning", priority="interactive"),
                            0).lane == INTERACTIVE
    for nonsense in ("urgent", ["batch"], 1):
        with pytest.raises(OllamaFailure) as bad:
            admission.ticket(request(prompt="x", priority=nonsense), 0)
        assert bad.value.code is ErrorCode.BAD_REQUEST and "interactive, batch" in bad.value.message
    for nonsense in ({"name": "voice_eval"}, 3):
        with pytest.raises(OllamaFailure) as bad:
            admission.ticket(request(prompt="x", profile=nonsense), 0)
        assert bad.value.code is ErrorCode.BAD_REQUEST


def test_a_profile_fills_in_under_the_requests_own_arguments(admission):
    args = admission.ticket(request(prompt="x", profile="voice_eval", temperature=0.9,
                                    options={"seed": 7}), 0).args
    assert args["temperature"] == 0.9 and args["max_tokens"] == 400
    assert args["options"] == {"top_k": 5, "seed": 7}
    with pytest.raises(OllamaFailure) as unknown:
        admission.ticket(request(prompt="x", profile="nope"), 0)
    assert unknown.value.code is ErrorCode.BAD_REQUEST
    assert "profiles: cleaning, voice_eval" in unknown.value.message


def test_the_deadline_asked_for_is_bounded_by_the_users_limit(admission):
    assert admission.ticket(request(prompt="x", profile="voice_eval"), 0).timeout == 10
    assert admission.ticket(request(prompt="x", profile="voice_eval", timeout=20), 0).timeout == 20
    # Nobody chose one: the default 60 s, cut to the user's 30 s.
    assert admission.ticket(request(prompt="x"), 0).timeout == 30
    with pytest.raises(OllamaFailure) as over:
        admission.ticket(request(prompt="x", timeout=31), 0)
    assert over.value.code is ErrorCode.BUSY and not over.value.to_error().retryable
    assert "tenants.max_timeout = 30 s" in over.value.message
    assert admission.ticket(request(prompt="x", timeout=100), 1234).timeout == 100


def test_the_model_policy_names_what_it_refuses(tmp_path):
    policy = admission_from_config(load(tmp_path, """
allowed_models = ["llama3.1:8b", "llama3.2:1b", "Qwen3:0.6b", "nomic-embed-text"]
load_on_demand = false
max_keep_alive = "10m"
""" + PROFILES), loaded=lambda: {"llama3.2:1b:latest", "llama3.2:1b"})

    def refusal(body, **args):
        try:
            policy.check_model(body, request(**args))
        except OllamaFailure as failure:
            assert failure.code is ErrorCode.NOT_ALLOWED and not failure.to_error().retryable
            return failure.message
        return None
    assert "not allowed on this host" in refusal({"model": "mistral"})
    assert "load_on_demand is off" in refusal({"model": "nomic-embed-text"})
    assert refusal({"model": "llama3.2:1b"}) is None          # loaded already
    assert refusal({"model": "qwen3:0.6b"}) is None           # a profile's model: configured
    assert refusal({"model": "llama3.1:8b", "keep_alive": "30m"}) is None  # the daemon's own
    assert "'1h'" in refusal({"model": "llama3.1:8b"}, keep_alive="1h")
    assert "for ever" in refusal({"model": "llama3.1:8b"}, keep_alive=-1)
    assert refusal({"model": "llama3.1:8b"}, keep_alive=600) is None


@pytest.mark.parametrize("text, message", [
    ('[profiles.x]\ntemprature = 0.1\n', "profiles.x.temprature: unknown key"),
    ('[profiles.x]\npriority = "urgent"\n', "profiles.x.priority: must be one of interactive, batch"),
    ('[profiles.x]\ntimeout = 0\n', "profiles.x.timeout: must be a number of seconds"),
    ('[profiles.x]\noptions = {num_ctx = 8192}\n', "profiles.x.options.num_ctx: a runner option"),
    ('[user_limits."no-such-user-here"]\nmax_queued = 1\n', "no such user"),
    ('[user_limits."0"]\nmax_queud = 1\n', "user_limits.'0'.max_queud: unknown key"),
    ('[user_limits."0"]\nmax_concurrent = 0\n', "must be 1 to 256"),
    ('allowed_models = "llama3.1:8b"\n', "allowed_models: expected a list of strings"),
    ('max_keep_alive = "1"\n', "max_keep_alive: must be a Go duration"),
    ('[scheduling]\nbatch_min_share = 1.5\n', "scheduling.batch_min_share: 1.5 is out of range"),
])
def test_bad_scheduling_config_stops_start_up_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert message in str(err.value)


def test_user_limits_by_name_or_uid_override_the_defaults(tmp_path):
    book = limit_book(load(tmp_path, '[tenants]\nmax_queued = 10\nmax_concurrent = 3\n'
                                     '[user_limits."root"]\nmax_concurrent = 1\n'))
    root = pwd.getpwnam("root").pw_uid
    assert (book.of(root).max_queued, book.of(root).max_concurrent) == (10, 1)
    assert (book.of(4321).max_queued, book.of(4321).max_concurrent) == (10, 3)
    assert book.of(None).max_concurrent == 3


def test_a_models_list_may_come_from_the_environment():
    loaded = config.load("/dev/null", env={"OLLAMAD_ALLOWED_MODELS": "llama3.1:8b, qwen3:0.6b"})
    assert loaded.allowed_models == ("llama3.1:8b", "qwen3:0.6b")
