"""Requests across an Ollama crash, a wedge and a slow generation: nothing is lost."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import zmq

from ollamad_client import protocol

FAST_PROBES = {"ollama": {"probe_interval": 0.2, "probe_timeout": 0.5,
                          "inference_probe_timeout": 0.5, "hang_after": 1.0,
                          "restart_backoff_initial": 0.1}}




def final_replies(sock: zmq.Socket, ids: set[str], timeout: float) -> dict[str, list]:
    """Every message per id until each id has a final reply, then a little longer."""
    seen: dict[str, list] = {i: [] for i in ids}
    deadline = time.monotonic() + timeout
    quiet_until = None
    while time.monotonic() < (quiet_until or deadline):
        if sock.poll(50):
            reply = protocol.decode_reply(sock.recv())
            seen[reply.id].append(reply)
        if quiet_until is None and all(any(r.final for r in v) for v in seen.values()):
            quiet_until = time.monotonic() + 0.5  # catch any duplicate final reply
    return seen


def test_kill_9_under_8_way_load_loses_nothing(daemon_factory, reaper, wait_for):
    daemon = daemon_factory({"attempt_timeout": 5.0, **FAST_PROBES},
                            env={"OLLAMAD_STANDIN_TOKEN_DELAY": "0.01"})
    before = daemon.wait_ready()["ollama"]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.socket)
    ids = {f"load-{i}" for i in range(48)}
    try:
        for rid in sorted(ids):
            sock.send(protocol.encode_request(protocol.Request(
                id=rid, op="generate", args={"prompt": rid, "max_tokens": 30}, timeout=30.0)))
        wait_for(lambda: daemon.standin_state()["stats"]["completed_generations"] >= 8, 10,
                 "some generations to finish")
        os.kill(before["pid"], signal.SIGKILL)
        seen = final_replies(sock, ids, timeout=40)
    finally:
        sock.close()
    finals = {rid: [r for r in msgs if r.final] for rid, msgs in seen.items()}
    assert all(len(f) == 1 for f in finals.values()), {k: len(v) for k, v in finals.items()}
    failed = {rid: f[0].error for rid, f in finals.items() if f[0].error is not None}
    assert not failed
    after = daemon.wait_ready()["ollama"]
    reaper.track(after["pid"])
    assert after["pid"] != before["pid"] and after["restarts"] == 1
    assert after["last_exit"]["signal"] == signal.SIGKILL
    assert "SIGKILL" in after["last_reason"]


def test_orphaned_runner_is_swept_after_kill_9(daemon_factory, reaper, wait_for):
    daemon = daemon_factory(FAST_PROBES)
    before = daemon.wait_ready()["ollama"]
    runners = [r["pid"] for r in before["process"]["runners"]]
    assert runners
    reaper.track(*runners)
    os.kill(before["pid"], signal.SIGKILL)
    wait_for(lambda: daemon.client().status()["ollama"]["pid"] not in (None, before["pid"])
             and daemon.client().status()["ollama"]["state"] == "RUNNING", 15, "the restart")
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in runners if psutil.pid_exists(p)],
                                    timeout=5)
    assert not alive, "the old runner should have been swept"
    assert daemon.client().status()["ollama"]["orphans_swept"] >= 1


def test_a_wedge_is_detected_restarted_and_the_waiting_request_served(daemon_factory, reaper):
    daemon = daemon_factory({"attempt_timeout": 20.0, **FAST_PROBES})
    before = daemon.wait_ready()["ollama"]
    daemon.set_fault("hang")  # generation wedges while / still answers
    started = time.monotonic()
    with daemon.client(timeout=30.0) as client:
        result = client.generate("served after the restart")
    assert result["text"]
    status = daemon.wait_ready()["ollama"]
    reaper.track(status["pid"])
    assert status["pid"] != before["pid"] and status["restarts"] >= 1
    assert "hung" in (status["last_reason"] or "")
    # hang_after 1 s + a few 0.2 s probe intervals + restart: well inside 10 s.
    assert time.monotonic() - started < 10


def test_a_wedge_with_eight_requests_in_flight_fails_none_of_them(daemon_factory, reaper,
                                                                   wait_for):
    # One attempt each: the attempt the wedge's restart cuts is not the request's fault,
    # so it does not count; the deadline (60 s) is what bounds the retries.
    daemon = daemon_factory({"max_attempts": 1, **FAST_PROBES})
    before = daemon.wait_ready()["ollama"]
    daemon.quiesce()
    daemon.set_fault("hang")  # every generation wedges, the probe's too
    results: list = []
    with daemon.client(timeout=70.0) as client:
        threads = [threading.Thread(target=lambda i=i: results.append(
            client.generate(f"wedged {i}", timeout=60.0))) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(70.0)
    assert len(results) == 8 and all(r["text"] for r in results)
    assert all(r["attempts"] == 2 for r in results)   # the wedged one, then the new Ollama
    status = daemon.wait_ready()["ollama"]
    reaper.track(status["pid"])
    assert status["pid"] != before["pid"] and "hung" in (status["last_reason"] or "")
    assert "8 generation(s) in flight" in status["last_reason"]


def test_a_slow_but_progressing_generation_is_not_killed(daemon_factory):
    # One slot: the inference probe queues behind the slow generation and
    # times out, but chunks keep arriving, so Ollama is not hung.
    daemon = daemon_factory({**FAST_PROBES, "ollama": {**FAST_PROBES["ollama"], "num_parallel": 1}},
                            env={"OLLAMAD_STANDIN_TOKEN_DELAY": "0.15"})
    with daemon.client(timeout=30.0) as client:
        result = client.generate("a long story", max_tokens=12)  # ~1.8 s > hang_after
    assert result["completion_tokens"] == 12
    assert daemon.client().status()["ollama"]["restarts"] == 0


def test_requests_during_a_restart_wait_for_running(daemon_factory, reaper):
    daemon = daemon_factory({**FAST_PROBES}, env={"OLLAMAD_STANDIN_STARTUP_DELAY": "0.5"})
    before = daemon.wait_ready()["ollama"]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.socket)
    try:
        # Back to back, without waiting for the restart's answer: the daemon
        # reads the generate after the restart, so it must not slip through
        # to the old Ollama before that one is stopped.
        sock.send(protocol.encode_request(protocol.Request(
            id="restart", op="restart", args={"reason": "test restart"}, timeout=20.0)))
        sock.send(protocol.encode_request(protocol.Request(
            id="after", op="generate", args={"prompt": "after the restart"}, timeout=20.0)))
        seen = final_replies(sock, {"restart", "after"}, timeout=20)
    finally:
        sock.close()
    restart, after = (next(r for r in seen[i] if r.final) for i in ("restart", "after"))
    assert restart.result == {"restarted": True, "reason": "test restart"}
    assert after.error is None and after.result["text"] and after.result["attempts"] == 1
    status = daemon.wait_ready()["ollama"]
    reaper.track(status["pid"])
    assert status["restarts"] == 1 and status["pid"] != before["pid"]
    # The new Ollama (the daemon's url now points at it) served the request.
    assert daemon.sent("after the restart")["prompt"] == "after the restart"


def test_a_crash_loop_ends_fatal_and_health_says_why(crash_looping, wait_for):
    daemon = crash_looping(max_restarts=2)
    client = daemon.client(timeout=5.0)
    wait_for(lambda: _state(client) == "FATAL", 20, "FATAL")
    health = client.health()
    assert health["status"] == "unhealthy"
    assert any("FATAL" in r and "exit code 3" in r for r in health["reasons"]), health
    from ollamad_client import OllamadError
    started = time.monotonic()
    try:
        client.generate("no Ollama", timeout=5.0)
        raise AssertionError("should fail")
    except OllamadError as exc:
        assert exc.code.value == "unavailable"
    assert time.monotonic() - started < 2.0
    client.close()


def _state(client):
    try:
        return client.status()["ollama"]["state"]
    except Exception:
        return None


def test_a_sigstopped_ollama_is_running_again_within_3_probe_intervals(daemon_factory, reaper,
                                                                        wait_for):
    # stop_grace 10 s: were the stopped server not continued after SIGTERM, the restart would
    # wait all of it for the SIGKILL.
    interval = 0.5
    daemon = daemon_factory({"ollama": {"probe_interval": interval, "probe_timeout": 0.3,
                                        "inference_probe_timeout": 0.5, "stop_grace": 10.0}})
    before = daemon.wait_ready()["ollama"]
    with daemon.client(timeout=2.0) as client:
        os.kill(before["pid"], signal.SIGSTOP)
        stopped_at = time.monotonic()
        after = wait_for(lambda: (s := client.status()["ollama"])["state"] == "RUNNING"
                         and s["pid"] not in (None, before["pid"]) and s, 3 * interval + 5,
                         "RUNNING again")
        took = time.monotonic() - stopped_at
    reaper.track(after["pid"])
    assert took < 3 * interval, f"{took:.2f} s"
    assert after["last_reason"] == f"ollama[{before['pid']}] is stopped (SIGSTOP?)"
    assert after["last_exit"]["code"] == 0   # it obeyed SIGTERM: no SIGKILL
