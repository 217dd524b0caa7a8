"""Config precedence and errors: defaults < TOML file < OLLAMAD_* < flags."""

import pwd

import pytest

from ollamad import config
from ollamad.config import ConfigError


def write(tmp_path, text):
    path = tmp_path / "ollamad.toml"
    path.write_text(text)
    return path


def test_defaults_follow_the_old_client():
    c = config.load(env={})
    assert (c.model, c.workers, c.attempt_timeout, c.max_attempts) == ("llama3.1:8b", 8, 10.0, 3)
    assert (c.backoff_initial, c.backoff_max) == (2.0, 8.0)
    assert c.ollama.url == "http://127.0.0.1:11434"


def test_file_then_environment_then_flags(tmp_path):
    path = write(tmp_path, 'workers = 4\nmodel = "a"\n[ollama]\nprobe_interval = 2\n')
    c = config.load(path, env={"OLLAMAD_MODEL": "b", "OLLAMAD_OLLAMA_PROBE_INTERVAL": "3.5"},
                    overrides={"workers": 6})
    assert (c.workers, c.model, c.ollama.probe_interval) == (6, "b", 3.5)


def test_int_is_accepted_for_float_and_octal_string_for_mode(tmp_path):
    c = config.load(write(tmp_path, 'attempt_timeout = 5\nsocket_mode = "0640"\n'), env={})
    assert c.attempt_timeout == 5.0 and c.socket_mode == 0o640


@pytest.mark.parametrize("text, key", [
    ("workerz = 3\n", "workerz"),
    ('workers = "8"\n', "workers"),
    ("[ollama]\nprobe_intervall = 1\n", "ollama.probe_intervall"),
    ("[gpu]\npoll_interval = true\n", "gpu.poll_interval"),
    ("ollama = 3\n", "ollama"),
    ("workers = 0\n", "workers"),
])
def test_bad_keys_and_types_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, text), env={})
    assert str(err.value).startswith(key + ":")


def test_bad_environment_values_name_the_variable():
    with pytest.raises(ConfigError, match=r"workers: expected an integer, got 'many' \(from OLLAMAD_WORKERS\)"):
        config.load(env={"OLLAMAD_WORKERS": "many"})
    with pytest.raises(ConfigError, match=r"max_attempts: 0 is out of range: must be 1 to 100 \(set by OLLAMAD_MAX_ATTEMPTS\)"):
        config.load(env={"OLLAMAD_MAX_ATTEMPTS": "0"})


def test_variables_that_are_no_setting_are_ignored_and_logged_at_debug(caplog):
    # The environment is shared: the stand-in's knobs, CI's own OLLAMAD_CI_VENV, typos.
    with caplog.at_level("DEBUG", logger="ollamad.config"):
        loaded = config.load(env={"OLLAMAD_STANDIN_TOKEN_DELAY": "0", "OLLAMAD_CI_VENV": "/tmp/v",
                                  "OLLAMAD_WORKRS": "4", "OLLAMAD_WORKERS": "3"})
    assert loaded.workers == 3
    assert "ignoring OLLAMAD_WORKRS: not an ollamad setting" in caplog.text
    assert "OLLAMAD_CI_VENV" in caplog.text


def test_missing_explicit_file_is_an_error_but_missing_default_is_not(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml", env={})
    assert config.load(env={"OLLAMAD_CONFIG": str(write(tmp_path, "workers = 2\n"))}).workers == 2


def test_broken_toml_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="config file"):
        config.load(write(tmp_path, "workers = \n"), env={})


@pytest.mark.parametrize("text, message", [
    ("max_attempts = 0\n", "max_attempts: 0 is out of range: must be 1 to 100"),
    ("[ollama]\nprobe_timeout = 0.0\n", "ollama.probe_timeout: 0.0 is out of range: must be > 0"),
    ("[ollama]\nhang_after = -1.0\n", "ollama.hang_after: -1.0 is out of range"),
    ("[ollama]\nstop_grace = 0\n", "ollama.stop_grace: 0.0 is out of range"),
    ("[ollama]\nrestart_window = 0\n", "ollama.restart_window: 0.0 is out of range"),
    ("[ollama]\ninference_probe_timeout = 0\n", "ollama.inference_probe_timeout: 0.0 is out of range"),
    ("backoff_multiplier = 0\n", "backoff_multiplier: 0.0 is out of range: must be 1 to 100"),
    ("backoff_initial = 5.0\nbackoff_max = 1.0\n", "backoff_max: must be at least backoff_initial"),
    ("log_level = \"loud\"\n", "log_level: 'loud' is out of range: must be one of"),
    ("socket = \"banana\"\n", "socket: must be an ipc:// or tcp:// endpoint"),
    ("socket = \"ipc:///a.sock,ipc:///b.sock\"\n", "socket: must be one endpoint to bind"),
])
def test_ranges_and_rules_say_what_is_valid(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, text), env={})
    assert str(err.value).startswith(message), str(err.value)


def test_example_config_parses_and_names_every_key(tmp_path):
    text = config.example_toml()
    uncommented = "\n".join(line[2:] if line.startswith(("# [", "# ")) and " = " in line
                            or line.startswith("# [") else line for line in text.splitlines())
    path = write(tmp_path, uncommented)
    loaded = config.load(path, env={})
    assert loaded.replace(runner_options={}, user_limits={}, profiles={}) == config.Config()
    assert loaded.runner_options == {"llama3.1:8b": {"num_ctx": 8192, "num_batch": 512}}
    assert loaded.user_limits == {pwd.getpwnam("nobody").pw_uid: {"max_concurrent": 2,
                                                                  "max_queued": 20000}}
    # The old client's five profiles are in effect as shipped (not commented out).
    shipped = config.load(write(tmp_path, text), env={}).profiles
    assert {name: p.args["temperature"] for name, p in shipped.items()} == {
        "data_cleaning": 0.1, "skill_demand": 0.2, "voice_eval": 0.3, "recommendations": 0.7,
        "gap_narrative": 0.7}
    assert shipped["data_cleaning"].priority == "batch" and shipped["voice_eval"].timeout == 10
    assert set(loaded.profiles) == set(shipped) | {"translation"}


@pytest.mark.parametrize("value", ["-1", "300", "30 m", ""])
def test_a_keep_alive_that_is_no_go_duration_is_refused_naming_the_key_and_the_fix(value):
    # OLLAMA_KEEP_ALIVE takes "-1"; Ollama's API, where the probes send this, does not.
    with pytest.raises(ConfigError) as err:
        config.load(env={"OLLAMAD_OLLAMA_KEEP_ALIVE": value})
    message = str(err.value)
    assert message.startswith("ollama.keep_alive: must be a Go duration with a unit"), message
    assert '"-1s" to keep the model loaded for ever' in message
    assert f"now ollama.keep_alive = {value!r}" in message
    assert "set by OLLAMAD_OLLAMA_KEEP_ALIVE" in message


@pytest.mark.parametrize("value", ["30m", "1h30m", "-1s", "0", "0s", "1.5h"])
def test_go_durations_are_valid_keep_alives(tmp_path, value):
    path = write(tmp_path, f'[ollama]\nkeep_alive = "{value}"\n')
    assert config.load(path, env={}).ollama.keep_alive == value
