"""Generation semantics: load/unload, limits, timings, determinism, JSON output, keep-alive."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import psutil
import requests

MODEL = "llama3.1:8b"
TIMEOUT = 10.0
RFC3339_NANO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


def generate(standin, **body) -> dict:
    answer = requests.post(standin.url + "/api/generate",
                           json={"model": MODEL, "stream": False, **body}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    return answer.json()


def loaded_models(standin) -> dict[str, dict]:
    models = requests.get(standin.url + "/api/ps", timeout=TIMEOUT).json()["models"]
    return {model["name"]: model for model in models}


def test_empty_prompt_loads_and_keep_alive_zero_unloads(standin):
    loaded = requests.post(standin.url + "/api/generate", json={"model": MODEL},
                           timeout=TIMEOUT)  # streaming by default, yet one JSON object
    assert loaded.headers["Content-Type"] == "application/json; charset=utf-8"
    body = loaded.json()
    assert (body["response"], body["done"], body["done_reason"]) == ("", True, "load")
    assert RFC3339_NANO_UTC.fullmatch(body["created_at"])
    assert MODEL in loaded_models(standin)
    unloaded = generate(standin, keep_alive=0)
    assert (unloaded["done"], unloaded["done_reason"]) == (True, "unload")
    assert MODEL not in loaded_models(standin)


def test_chat_without_messages_loads_and_unloads(standin):
    chat = standin.url + "/api/chat"
    loaded = requests.post(chat, json={"model": MODEL}, timeout=TIMEOUT).json()
    assert loaded["message"] == {"role": "assistant", "content": ""}
    assert loaded["done_reason"] == "load"
    unloaded = requests.post(chat, json={"model": MODEL, "keep_alive": "0s"},
                             timeout=TIMEOUT).json()
    assert unloaded["done_reason"] == "unload"


def test_num_predict_caps_tokens(standin):
    capped = generate(standin, prompt="Write a story", options={"num_predict": 3})
    assert (capped["done_reason"], capped["eval_count"]) == ("length", 3)
    full = generate(standin, prompt="Write a story")
    assert full["response"].startswith(capped["response"]) and full["eval_count"] > 3


def test_stop_sequences_end_the_answer(standin):
    full = generate(standin, prompt="Say things", options={"temperature": 0})["response"]
    stop = full.split()[2]
    stopped = generate(standin, prompt="Say things", options={"temperature": 0, "stop": [stop]})
    assert stopped["done_reason"] == "stop"
    assert stopped["response"] == full[:full.index(stop)]


def test_same_request_same_text_and_seed_matters_only_when_sampling(standin):
    def text(**body):
        return generate(standin, **body)["response"]

    assert text(prompt="a", options={"seed": 1}) == text(prompt="a", options={"seed": 1})
    assert text(prompt="a", options={"seed": 1}) != text(prompt="a", options={"seed": 2})
    assert text(prompt="a", options={"temperature": 0, "seed": 1}) == text(
        prompt="a", options={"temperature": 0, "seed": 2})
    assert text(prompt="a") != text(prompt="b")
    assert text(prompt="a") != text(prompt="a", system="You are terse.")


def test_token_counts_agree_with_the_text_and_context(standin):
    answer = generate(standin, prompt="one two three")
    assert answer["prompt_eval_count"] == 3
    assert answer["eval_count"] == len(re.findall(r"\s*(?:\w+|[^\w\s])", answer["response"]))
    assert len(answer["context"]) == 3 + answer["eval_count"]
    follow_up = generate(standin, prompt="four", context=answer["context"])
    assert follow_up["prompt_eval_count"] == 1 + len(answer["context"])


def test_durations_follow_the_configured_speeds(ollama_standin_factory):
    delay, rate = 0.02, 200.0
    standin = ollama_standin_factory(token_delay=delay, prompt_rate=rate, load_time=0.2)
    answer = generate(standin, prompt="one two three four five six seven eight nine ten",
                      options={"num_predict": 10})
    ns = 1e9
    assert answer["eval_count"] == 10 and answer["prompt_eval_count"] == 10
    assert 10 * delay * ns <= answer["eval_duration"] < (10 * delay + 0.15) * ns
    assert 10 / rate * ns <= answer["prompt_eval_duration"] < (10 / rate + 0.15) * ns
    assert answer["load_duration"] >= 0.2 * ns
    parts = ("load_duration", "prompt_eval_duration", "eval_duration")
    assert answer["total_duration"] >= sum(answer[part] for part in parts)
    assert all(isinstance(answer[name], int) for name in parts + ("total_duration",))
    warm = generate(standin, prompt="again", options={"num_predict": 1})
    assert warm["load_duration"] < 0.05 * ns  # already loaded


def test_format_json_gives_parseable_json(standin):
    text = generate(standin, prompt="Answer in JSON", format="json")["response"]
    assert isinstance(json.loads(text), dict)


def test_format_schema_gives_matching_json(standin):
    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "year": {"type": "integer"},
        "rating": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}},
        "available": {"type": "boolean"}}, "required": ["name", "year"]}
    answer = requests.post(standin.url + "/api/chat", timeout=TIMEOUT, json={
        "model": MODEL, "stream": False, "format": schema,
        "messages": [{"role": "user", "content": "Describe a film"}]}).json()
    value = json.loads(answer["message"]["content"])
    assert list(value) == ["name", "year", "rating", "tags", "available"]
    assert isinstance(value["year"], int) and isinstance(value["rating"], float)
    assert isinstance(value["available"], bool) and all(isinstance(t, str) for t in value["tags"])


def test_keep_alive_sets_expiry(standin):
    def expires_in(keep_alive) -> float:
        generate(standin, prompt="", keep_alive=keep_alive)
        expires = datetime.fromisoformat(loaded_models(standin)[MODEL]["expires_at"])
        return (expires - datetime.now(timezone.utc)).total_seconds()

    assert 590 < expires_in("10m") <= 600
    assert 25 < expires_in(30) <= 30
    assert expires_in(-1) > 100 * 365 * 86400  # forever


def test_expired_keep_alive_unloads_and_stops_the_runner(standin, wait_until):
    # (An empty prompt with keep_alive under 1 s would unload at once, as in Ollama.)
    generate(standin, prompt="x", keep_alive="300ms")
    [pid] = [r["pid"] for r in standin.state()["runners"] if r["model"] == MODEL]
    wait_until(lambda: MODEL not in loaded_models(standin), what="unload")

    def runner_gone():
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    wait_until(runner_gone, what="runner exit")
