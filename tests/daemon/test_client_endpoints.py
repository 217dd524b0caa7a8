"""A client of two real daemons (each with its stand-in child): requests spread over
both, a stopped daemon is skipped and taken back when it returns, and a request a
dying daemon took fails once, never sent again."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

from ollamad_client import AsyncClient, Client, OllamaClient

#: Each generation takes a while (5 tokens at 20 ms), so that requests overlap.
SLOW_ENOUGH = {"OLLAMAD_STANDIN_TOKEN_DELAY": "0.02"}


def served(daemon) -> int:
    """Model requests the daemon has answered (its own counter)."""
    with daemon.client(timeout=5.0) as client:
        return client.metrics()["total_requests"]


def got(daemon, prompt: str) -> bool:
    """Whether the daemon's Ollama has received a generation of ``prompt``."""
    return any(isinstance(body, dict) and body.get("prompt") == prompt
               for body in daemon.standin_state()["recent_requests"])


def concurrently(call, count: int, callers: int = 8) -> list:
    """``count`` calls of ``call(i)`` from ``callers`` threads; every outcome (result or
    exception), in call order."""
    outcomes: list = [None] * count
    queue = iter(range(count))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = next(queue, None)
            if i is None:
                return
            try:
                outcomes[i] = call(i)
            except Exception as exc:  # kept, to be asserted on
                outcomes[i] = exc
    threads = [threading.Thread(target=work) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a caller did not finish"
    return outcomes


def test_eight_callers_spread_over_both_daemons(daemon_factory):
    a, b = daemon_factory(env=SLOW_ENOUGH), daemon_factory(env=SLOW_ENOUGH)
    before = served(a), served(b)
    with Client([a.socket, b.socket], timeout=20.0) as client:
        outcomes = concurrently(lambda i: client.generate(f"p{i}", max_tokens=5), 32)
    assert all(isinstance(o, dict) and o["text"] for o in outcomes), outcomes
    shares = served(a) - before[0], served(b) - before[1]
    assert sum(shares) == 32 and min(shares) >= 8, shares


def test_a_stopped_daemon_is_skipped_and_taken_back_when_it_returns(daemon_factory):
    a, b = daemon_factory(), daemon_factory()
    connect_timeout = 3.0
    with Client([a.socket, b.socket], timeout=20.0, connect_timeout=connect_timeout) as client:
        for i in range(4):
            client.generate(f"before {i}", max_tokens=3)
        assert a.stop() == 0
        before_b = served(b)
        for i in range(10):
            started = time.monotonic()
            assert client.generate(f"sequential {i}", max_tokens=3)["text"]
            # Had the stopped one been tried, its connect_timeout would have passed first.
            assert time.monotonic() - started < connect_timeout
        outcomes = concurrently(lambda i: client.generate(f"concurrent {i}", max_tokens=3), 16)
        assert all(isinstance(o, dict) for o in outcomes), outcomes
        assert served(b) - before_b == 26

        a.start()
        a.wait_ready()
        before_a = served(a)
        deadline = time.monotonic() + 20
        while served(a) == before_a:   # zmq reconnects in the background
            assert time.monotonic() < deadline, "the returned daemon got no request"
            client.generate("probe", max_tokens=1)
        back = served(a)
        for i in range(10):
            client.generate(f"after {i}", max_tokens=3)
        assert served(a) - back >= 4   # alternating again (ties go round robin)


def test_the_async_client_spreads_over_both_daemons(daemon_factory):
    a, b = daemon_factory(env=SLOW_ENOUGH), daemon_factory(env=SLOW_ENOUGH)
    before = served(a), served(b)

    async def main() -> list[dict]:
        async with AsyncClient([a.socket, b.socket], timeout=20.0) as client:
            return await asyncio.gather(*[client.generate(f"p{i}", max_tokens=5)
                                          for i in range(16)])
    results = asyncio.run(main())
    assert len(results) == 16 and all(r["text"] for r in results)
    shares = served(a) - before[0], served(b) - before[1]
    assert sum(shares) == 16 and min(shares) >= 4, shares


def test_a_request_a_dying_daemon_took_fails_once_and_is_not_sent_again(daemon_factory):
    slow = {"OLLAMAD_STANDIN_TOKEN_DELAY": "0.5"}
    daemons = [daemon_factory(env=slow), daemon_factory(env=slow)]
    client = OllamaClient(socket=[d.socket for d in daemons], timeout=30.0)
    try:
        outcome: dict = {}
        caller = threading.Thread(target=lambda: outcome.update(
            client.generate("only once", max_tokens=20)))
        caller.start()
        deadline = time.monotonic() + 10
        while not (taken := [d for d in daemons if got(d, "only once")]):
            assert time.monotonic() < deadline, "the request reached no stand-in"
            time.sleep(0.02)
        dying, other = taken[0], next(d for d in daemons if d is not taken[0])
        dying.stop(signal.SIGKILL)
        caller.join(20)
        assert not caller.is_alive()
    finally:
        client.shutdown()
    assert outcome["success"] is False and outcome["error_code"] == "unavailable", outcome
    assert "closed the connection before answering" in outcome["error"]
    assert not got(other, "only once")
