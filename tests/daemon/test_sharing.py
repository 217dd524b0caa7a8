"""Many apps, one GPU: lanes, the batch lane's share, tenants' turns, limits, model policy,
profiles and who-uses-what figures, with the real daemon, real clients and the stand-in.

Order is read from what the stand-in received, never from timings: the
stand-in holds the first two requests (a ``hang`` fault) while the test
queues the rest, then lets them go, so which request Ollama gets next is the
scheduler's choice alone. The two held items end together, so the two
requests that take their slots reach Ollama in either order: assertions look
at pairs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import pytest

from ollamad_client import BadRequest, Busy, NotAllowed, OllamadError, RequestTimeout

#: 8 tokens at 0.05 s: each item holds a worker for about 0.4 s.
SLOW = {"OLLAMAD_STANDIN_TOKEN_DELAY": "0.05"}
ITEM = {"max_tokens": 8}
QUIET = {"ollama": {"probe_interval": 60.0}}


def received(daemon, prefix: str) -> list[str]:
    """The prompts starting with ``prefix`` that Ollama received, in order."""
    return [body["prompt"] for body in daemon.standin_state()["recent_requests"]
            if isinstance(body, dict) and str(body.get("prompt", "")).startswith(prefix)]


def in_background(call, *args, **kwargs) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call(*args, **kwargs))
        except OllamadError as exc:
            out.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def generations(daemon, count: int, wait_for) -> None:
    wait_for(lambda: daemon.standin_state()["stats"]["generations_in_flight"] == count, 10,
             f"{count} generations in flight")


def hold_the_next_two(daemon, client) -> None:
    """Make the stand-in hold the next two generations until :func:`release`."""
    client.generate("warm", max_tokens=1)   # the model is known loaded: no load is held
    daemon.quiesce()
    daemon.set_fault("hang", count=2)


def release(daemon) -> None:
    daemon.standin("DELETE", "/_standin/faults")


def queued(daemon, client, count: int, wait_for) -> None:
    wait_for(lambda: client.status()["daemon"]["queue_depth"] == count, 10, f"{count} queued")


@pytest.fixture(scope="module")
def two_slots(module_daemon_factory):
    """Two workers, half kept for batch (one slot), no probes during the tests."""
    return module_daemon_factory({
        "workers": 2, "scheduling": {"batch_min_share": 0.5}, **QUIET,
        "profiles": {"voice_eval": {"temperature": 0.3, "max_tokens": 400,
                                    "priority": "interactive", "timeout": 10},
                     "cleaning": {"temperature": 0.1, "max_tokens": 7, "priority": "batch",
                                  "options": {"top_k": 5}},
                     "hurried": {"timeout": 1}}}, SLOW)


def test_an_interactive_request_takes_the_next_free_slot_ahead_of_a_queued_batch(
        two_slots, wait_for):
    daemon = two_slots
    # One tenant for both, so that only the lane, not the tenants' turns, can
    # put the interactive request first.
    with daemon.client(app="mixed") as etl, daemon.client(app="mixed") as voice:
        hold_the_next_two(daemon, etl)
        batch, _ = in_background(etl.batch, [f"lane-b{i}" for i in range(6)], **ITEM)
        generations(daemon, 2, wait_for)          # b0 and b1 hold both workers
        interactive, _ = in_background(voice.generate, "lane-interactive", **ITEM)
        queued(daemon, etl, 5, wait_for)
        release(daemon)
        batch.join(30), interactive.join(30)
    order = received(daemon, "lane-")
    # Not behind the four batch items still queued: it takes one of the two
    # slots that free up next (in arrival order it would be seventh).
    assert order.index("lane-interactive") in (2, 3), order


def test_the_batch_lane_keeps_its_share_while_interactive_work_waits(two_slots, wait_for):
    daemon = two_slots
    with daemon.client(app="mixed") as voice, daemon.client(app="mixed") as etl:
        hold_the_next_two(daemon, voice)
        chats = [in_background(voice.generate, f"share-i{i}", **ITEM) for i in range(6)]
        generations(daemon, 2, wait_for)
        queued(daemon, voice, 4, wait_for)
        batch, result = in_background(etl.batch, ["share-b0", "share-b1"], **ITEM)
        queued(daemon, voice, 6, wait_for)
        release(daemon)
        for thread, _ in [*chats, (batch, result)]:
            thread.join(30)
    assert not any(isinstance(item, OllamadError) for item in result[0])
    order = received(daemon, "share-")
    # One of the two slots is the batch lane's while it has work: its first
    # item runs as soon as slots free, ahead of the four interactive ones.
    assert order.index("share-b0") in (2, 3), order


def test_tenants_of_a_lane_take_turns(two_slots, wait_for):
    daemon = two_slots
    with daemon.client(app="first") as first, daemon.client(app="second") as second:
        hold_the_next_two(daemon, first)
        a, _ = in_background(first.batch, [f"turn-a{i}" for i in range(6)], **ITEM)
        generations(daemon, 2, wait_for)
        b, _ = in_background(second.batch, [f"turn-b{i}" for i in range(4)], **ITEM)
        queued(daemon, first, 8, wait_for)
        release(daemon)
        a.join(30), b.join(30)
    order = received(daemon, "turn-")
    # After the two already running, the tenants alternate: each pair of
    # slots that frees up goes to one item of each; the second tenant's four
    # items do not wait for the first one's remaining four.
    pairs = [sorted(name[5] for name in order[k:k + 2]) for k in range(2, 10, 2)]
    assert pairs == [["a", "b"]] * 4, order


def test_a_profile_fills_in_what_the_request_leaves_out_and_its_own_arguments_win(two_slots):
    daemon = two_slots
    with daemon.client(app="profiles") as client:
        client.generate("profiled", profile="voice_eval")
        client.generate("overridden", profile="voice_eval", temperature=0.9)
        client.generate("cleaned", profile="cleaning", options={"top_k": 9, "seed": 1})
        with pytest.raises(BadRequest) as unknown:
            client.generate("never", profile="no_such_profile")
        with pytest.raises(RequestTimeout) as hurried:
            daemon.set_fault("hang", count=1)
            client.generate("hurried", profile="hurried")
    assert {k: daemon.sent("profiled")["options"][k] for k in ("temperature", "num_predict")} == \
        {"temperature": 0.3, "num_predict": 400}
    assert {k: daemon.sent("overridden")["options"][k] for k in ("temperature", "num_predict")} == \
        {"temperature": 0.9, "num_predict": 400}
    # Options merge key by key, the request's winning.
    assert {k: daemon.sent("cleaned")["options"][k] for k in ("top_k", "seed", "num_predict")} == \
        {"top_k": 9, "seed": 1, "num_predict": 7}
    assert "unknown profile 'no_such_profile'" in unknown.value.message
    assert "cleaning" in unknown.value.message and "voice_eval" in unknown.value.message
    # The profile's deadline, since the call named none.
    assert "1 s deadline" in hurried.value.message
    lanes = daemon.client().metrics()["lanes"]
    assert lanes["batch"]["requests"] >= 1        # the cleaning profile's lane


def test_figures_by_lane_and_tenant_in_metrics_and_status(two_slots):
    daemon = two_slots
    with daemon.client(app="counted-a") as a, daemon.client(app="counted-b") as b:
        before = a.metrics()["lanes"]
        a.generate("count-1", **ITEM), a.generate("count-2", **ITEM)
        b.batch(["count-3", "count-4", "count-5"], **ITEM)
        with pytest.raises(OllamadError):
            b.generate("count-6", model="no-such-model", priority="batch")
        metrics, status = a.metrics(), a.status()
    tenants = {t["tenant"]: t for t in metrics["tenants"]}
    assert tenants["root/counted-a"]["requests"] == 2
    assert tenants["root/counted-a"]["successful_requests"] == 2
    assert tenants["root/counted-b"]["requests"] == 4
    assert tenants["root/counted-b"]["errors"] == {"model_not_found": 1}
    assert tenants["root/counted-b"]["completion_tokens"] >= 3
    assert set(tenants["root/counted-a"]["queue_wait"]) == {"p50", "p95", "p99", "window"}
    lanes = metrics["lanes"]
    assert lanes["batch"]["requests"] - before["batch"]["requests"] == 4
    assert lanes["interactive"]["requests"] - before["interactive"]["requests"] == 2
    assert lanes["batch"]["queue_wait"]["window"] >= 3
    scheduling = status["scheduling"]
    assert set(scheduling["lanes"]) == {"interactive", "batch"}
    assert scheduling["lanes"]["batch"]["in_flight"] == 0
    # status names the busiest (by work now, then by requests), metrics all of them.
    assert [t["tenant"] for t in scheduling["tenants"]] == \
        [t["tenant"] for t in metrics["tenants"]][:5]
    assert scheduling["tenants_known"] == len(metrics["tenants"])
    assert scheduling["profiles"] == ["cleaning", "hurried", "voice_eval"]


def test_the_status_command_shows_the_lanes_and_the_busiest_tenants(two_slots):
    with two_slots.client(app="shown") as client:
        client.generate("shown", **ITEM)
        busiest = client.status()["scheduling"]["tenants"][0]["tenant"]
    out = subprocess.run([sys.executable, "-m", "ollamad", "status", "--socket", two_slots.socket],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.split()[:1] == ["interactive"] for line in lines), out.stdout
    assert any(line.split()[:1] == ["batch"] for line in lines), out.stdout
    assert any(line.split()[:1] == [busiest] for line in lines), out.stdout


def test_the_generate_command_takes_a_profile_a_priority_and_an_app(two_slots):
    out = subprocess.run([sys.executable, "-m", "ollamad", "generate", "from the cli", "--json",
                          "--profile", "voice_eval", "--priority", "batch", "--app", "ops-shell",
                          "--socket", two_slots.socket], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert two_slots.sent("from the cli")["options"]["num_predict"] == 400
    with two_slots.client() as client:
        tenants = {t["tenant"]: t for t in client.metrics()["tenants"]}
    assert tenants["root/ops-shell"]["requests"] == 1


def test_legacy_get_metrics_returns_the_calling_process_own_figures(two_slots):
    script = (
        "import json, sys\n"
        "from ollamad_client import OllamaClient\n"
        "c = OllamaClient(socket=sys.argv[1], app='other-process')\n"
        "for i in range(3): c.generate(f'own-{i}', max_tokens=2)\n"
        "print(json.dumps(c.get_metrics())); c.shutdown()\n")
    with two_slots.legacy(app="this-process") as mine:
        mine.generate("mine", max_tokens=2)
        out = subprocess.run([sys.executable, "-c", script, two_slots.socket],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        theirs = json.loads(out.stdout)
        host = mine.get_metrics()["host"]
    assert theirs["total_requests"] == 3 and theirs["successful_requests"] == 3
    assert theirs["success_rate"] == 1.0
    # The daemon's figures for every app are there too, under their own key.
    assert theirs["host"]["total_requests"] >= 4 and host["total_requests"] >= 4
    assert {t["tenant"]: t["requests"] for t in host["tenants"]}["root/other-process"] == 3


# -- limits and the model policy ------------------------------------------------

LIMITS = {"workers": 4, **QUIET,
          "tenants": {"max_queued": 4, "max_timeout": 20.0, "max_concurrent": 1},
          "user_limits": {"root": {"max_concurrent": 2}},
          "allowed_models": ["llama3.1:8b", "llama3.2:1b"], "load_on_demand": False,
          "max_keep_alive": "10m"}


def test_each_user_limit_is_enforced_and_a_refusal_names_it(daemon_factory, wait_for):
    daemon = daemon_factory(LIMITS, env=SLOW)
    daemon.quiesce()
    with daemon.client(app="limited") as client:
        assert client.ping()["max_batch"] == 4        # clients split batches to fit
        # max_concurrent: root's override (2), not the default (1) nor the 4 workers.
        batch, out = in_background(client.batch, [f"lim-{i}" for i in range(4)], **ITEM)
        generations(daemon, 2, wait_for)
        more = [in_background(client.generate, f"lim-more-{i}", **ITEM) for i in range(2)]
        # max_queued: the 4 items now queued are this user's limit.
        wait_for(lambda: client.status()["daemon"]["queue_depth"] == 4, 10, "4 queued")
        with pytest.raises(Busy) as full:
            client.generate("one too many", **ITEM)
        batch.join(30)
        for thread, result in more:
            thread.join(30)
            assert result and not isinstance(result[0], OllamadError)
        with pytest.raises(Busy) as too_long:
            client.generate("waits too long", timeout=30)
        with pytest.raises(Busy) as never_fits:
            client.request("batch", {"prompts": ["x"] * 5})
        assert client.generate("fits", timeout=20, **ITEM)["text"]
    assert not any(isinstance(item, OllamadError) for item in out[0])
    assert daemon.standin_state()["stats"]["max_generations_in_flight"] == 2
    assert "tenants.max_queued" in full.value.message and full.value.retryable
    assert full.value.retry_after is not None and 0 < full.value.retry_after <= 60
    assert "tenants.max_timeout = 20 s" in too_long.value.message
    assert not too_long.value.retryable
    assert "tenants.max_queued = 4" in never_fits.value.message and not never_fits.value.retryable
    assert "one too many" not in [b.get("prompt") for b in daemon.standin_state()["recent_requests"]]


def test_the_model_policy_refuses_with_its_own_code_before_ollama_sees_it(daemon_factory):
    daemon = daemon_factory(LIMITS)
    with daemon.client(app="policy") as client:
        with pytest.raises(NotAllowed) as not_listed:
            client.generate("policy-qwen", model="qwen3:0.6b")
        with pytest.raises(NotAllowed) as not_on_demand:
            client.generate("policy-small", model="llama3.2:1b")   # allowed, not loaded
        with pytest.raises(NotAllowed) as pinned:
            client.generate("policy-pin", keep_alive=-1)
        with pytest.raises(NotAllowed) as too_long:
            client.generate("policy-hour", keep_alive="1h")
        assert client.generate("policy-ok", keep_alive="5m", max_tokens=2)["text"]
    assert "not allowed on this host" in not_listed.value.message
    assert "load_on_demand is off" in not_on_demand.value.message
    assert "for ever" in pinned.value.message and "'10m'" in pinned.value.message
    assert "'1h'" in too_long.value.message
    prompts = {b.get("prompt") for b in daemon.standin_state()["recent_requests"]
               if isinstance(b, dict)}
    assert prompts & {"policy-qwen", "policy-small", "policy-pin", "policy-hour"} == set()
    assert "policy-ok" in prompts


def test_a_reload_applies_changed_profiles(daemon_factory, wait_for):
    daemon = daemon_factory({**QUIET, "profiles": {"narrative": {"temperature": 0.7}}})
    with daemon.client(app="reload") as client:
        client.generate("before reload", profile="narrative", max_tokens=2)
        text = daemon.config_path.read_text().replace("temperature = 0.7", "temperature = 0.2")
        daemon.config_path.write_text(text + "\n[profiles.added]\nmax_tokens = 3\n")
        daemon.process.send_signal(1)   # SIGHUP

        wait_for(lambda: "added" in client.status()["scheduling"]["profiles"], 10, "the reload")
        client.generate("after reload", profile="narrative", max_tokens=2)
        client.generate("added profile", profile="added")
    assert daemon.sent("before reload")["options"]["temperature"] == 0.7
    assert daemon.sent("after reload")["options"]["temperature"] == 0.2
    assert daemon.sent("added profile")["options"]["num_predict"] == 3
