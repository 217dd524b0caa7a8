"""A client of several endpoints: the choice per request (a pure object), and the
routes over fake daemons (real ZeroMQ sockets). The same against real daemons
is in tests/daemon/test_client_endpoints.py."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from ollamad_client import AsyncClient, Client, OllamaClient, RequestTimeout, Unavailable
from ollamad_client._calls import parse_endpoints
from ollamad_client._channel import ThreadChannels
from ollamad_client._endpoints import LeastOutstanding, RouteBase


def generates(fake) -> int:
    return sum(1 for request in fake.received if request.op == "generate")


def wait_connected(client, timeout: float = 5.0) -> None:
    """Until this thread's sockets to every endpoint are connected: a socket still
    connecting after ``FIRST_CONNECT_S`` (a busy machine) is passed over, which
    would skew the counts these tests assert."""
    channels = client._channels.current().channels
    deadline = time.monotonic() + timeout
    while not all(channel.connected() for channel in channels):
        assert time.monotonic() < deadline, "the client did not connect to every endpoint"
        time.sleep(0.005)


# -- the choice, without sockets ---------------------------------------------

def test_ties_go_round_robin_so_a_sequential_caller_spreads():
    chooser = LeastOutstanding(3)
    assert [chooser.choose([True] * 3) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_the_endpoint_with_the_fewest_open_requests_is_chosen():
    chooser = LeastOutstanding(3)
    for index, change in [(0, 1), (0, 1), (1, 1), (2, 1), (2, 1), (2, 1)]:
        chooser.tally(index, change)
    assert chooser.choose([True] * 3) == 1
    chooser.tally(1, 1)            # now 2, 2, 3: a tie between 0 and 1, in turn after 1
    assert chooser.choose([True] * 3) == 0
    chooser.tally(2, -1)
    chooser.tally(2, -1)
    chooser.tally(2, -1)           # 2 closed all three: the least now
    assert chooser.choose([True] * 3) == 2
    assert chooser.outstanding() == [2, 2, 0]


def test_endpoints_that_are_down_are_skipped_and_none_up_is_none():
    chooser = LeastOutstanding(3)
    chooser.tally(1, 1)
    assert [chooser.choose([True, False, True]) for _ in range(4)] == [0, 2, 0, 2]
    assert chooser.choose([False, True, False]) == 1     # busier, but the only one up
    assert chooser.choose([False, False, False]) is None


def test_tallies_from_other_threads_are_all_counted():
    chooser = LeastOutstanding(2)

    def churn() -> None:
        for _ in range(2000):
            chooser.tally(0, 1)
            chooser.choose([True, True])
            chooser.tally(0, -1)
    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert chooser.outstanding() == [0, 0]


class StubChannel:
    """A channel that is up or not, and whose send fails or not."""

    def __init__(self, endpoint: str, up: bool, fails: bool = False, new: bool = False):
        self.endpoint, self.up, self.fails, self.sent = endpoint, up, fails, []
        self.opened_at = time.monotonic() if new else 0.0

    def connected(self) -> bool:
        return self.up

    def start(self, outgoing, connect_timeout, *, stream=False) -> None:
        if self.fails:
            raise Unavailable(f"lost {self.endpoint}")
        self.sent.append(outgoing)


def test_a_send_that_fails_goes_to_the_next_endpoint_that_is_up():
    from ollamad_client._channel import Route
    channels = [StubChannel("tcp://a:1", up=True, fails=True), StubChannel("tcp://b:1", up=False),
                StubChannel("tcp://c:1", up=True)]
    Route(channels, LeastOutstanding(3)).start("request", 1.0)
    assert channels[2].sent == ["request"] and not channels[1].sent


def test_when_every_endpoint_fails_the_error_names_each_one():
    from ollamad_client._channel import Route
    channels = [StubChannel("tcp://a:1", up=True, fails=True), StubChannel("tcp://b:1", up=False)]
    started = time.monotonic()
    with pytest.raises(Unavailable) as err:
        Route(channels, LeastOutstanding(2)).start("request", 0.3)
    assert time.monotonic() - started >= 0.3     # b had its connect_timeout to come up
    assert "no ollamad endpoint of 2 took the request" in err.value.message
    assert "lost tcp://a:1" in err.value.message
    assert "ollamad is not reachable at tcp://b:1" in err.value.message


def test_a_new_socket_still_connecting_is_waited_for_not_passed_over():
    from ollamad_client._channel import Route
    from ollamad_client._endpoints import FIRST_CONNECT_S
    chooser = LeastOutstanding(2)
    chooser.tally(0, 1)                      # a is busier than b
    busy, connecting = StubChannel("tcp://a:1", up=True), StubChannel("tcp://b:1", up=False,
                                                                        new=True)
    threading.Timer(FIRST_CONNECT_S / 5, lambda: setattr(connecting, "up", True)).start()
    Route([busy, connecting], chooser).start("first", 5.0)
    assert connecting.sent == ["first"] and not busy.sent
    never = StubChannel("tcp://c:1", up=False, new=True)       # down: it ages out
    started = time.monotonic()
    Route([busy, never], chooser).start("second", 5.0)
    assert busy.sent == ["second"] and time.monotonic() - started >= FIRST_CONNECT_S


def test_route_base_is_shared_by_both_routes():
    from ollamad_client._async_channel import AsyncRoute
    from ollamad_client._channel import Route
    assert issubclass(Route, RouteBase) and issubclass(AsyncRoute, RouteBase)


# -- naming the endpoints ----------------------------------------------------

def test_endpoints_come_as_a_list_or_a_comma_separated_string():
    assert parse_endpoints("ipc:///a.sock, tcp://h:5555") == ("ipc:///a.sock", "tcp://h:5555")
    assert parse_endpoints(["ipc:///a.sock", "tcp://h:5555"]) == ("ipc:///a.sock", "tcp://h:5555")
    for bad, message in [("ipc:///a.sock,", "empty endpoint"), ([], "no ollamad endpoint"),
                         ("ipc:///a.sock,ipc:///a.sock", "named twice")]:
        with pytest.raises(ValueError, match=message):
            parse_endpoints(bad)


def test_the_socket_environment_variable_may_name_several(make_fake, monkeypatch):
    a, b = make_fake(), make_fake()
    monkeypatch.setenv("OLLAMAD_SOCKET", f"{a.endpoint},{b.endpoint}")
    with Client(timeout=5.0) as client:
        assert client.endpoints == (a.endpoint, b.endpoint)
        wait_connected(client)
        for i in range(6):
            client.generate(f"p{i}")
    assert generates(a) == generates(b) == 3


def test_one_endpoint_is_the_single_channel_path_as_before(fake):
    with Client(fake.endpoint) as client:
        assert client.endpoints == (fake.endpoint,) and client.endpoint == fake.endpoint
        assert type(client._channels) is ThreadChannels
        assert client.at(fake.endpoint) is client
        assert client.generate("hi")["text"] == "echo: hi"


# -- routes over fake daemons ------------------------------------------------

def test_sequential_calls_alternate_between_two_daemons(make_fake):
    a, b = make_fake(), make_fake()
    with Client([a.endpoint, b.endpoint], timeout=5.0) as client:
        wait_connected(client)
        for i in range(10):
            assert client.generate(f"p{i}")["text"] == f"echo: p{i}"
    assert generates(a) == generates(b) == 5


def test_a_request_goes_where_fewest_of_ours_are_open(make_fake):
    a, b = make_fake(), make_fake()
    held = {a: [], b: []}
    for fake in (a, b):  # hold every generate until the test answers it
        fake.handler = lambda request, fake=fake: (
            held[fake].append(request) if request.op == "generate"
            else fake.default_handler(request))
    with Client([a.endpoint, b.endpoint], timeout=10.0) as client:
        results: list[str] = []
        def call(prompt: str) -> None:
            wait_connected(client)
            results.append(client.generate(prompt)["text"])
        threads = [threading.Thread(target=call, args=(f"p{i}",)) for i in range(4)]
        for thread in threads:   # one at a time: each sees the others open
            thread.start()
            deadline = time.monotonic() + 5
            while len(held[a]) + len(held[b]) < threads.index(thread) + 1:
                assert time.monotonic() < deadline, "request did not arrive"
                time.sleep(0.005)
        assert len(held[a]) == len(held[b]) == 2
        first = held[a][0]
        a.send(first, first.ok(a.generation_result("done")))   # a has 1 open, b 2
        deadline = time.monotonic() + 5
        while client._channels.chooser.outstanding() != [1, 2]:
            assert time.monotonic() < deadline, client._channels.chooser.outstanding()
            time.sleep(0.005)
        extra = threading.Thread(target=call, args=("p4",))
        extra.start()
        a.wait_for(3, op="generate")
        for fake in (a, b):
            for request in held[fake][1 if fake is a else 0:]:
                fake.send(request, request.ok(fake.generation_result("done")))
        for thread in [*threads, extra]:
            thread.join(10)
    assert results == ["done"] * 5 and len(held[b]) == 2


def test_a_daemon_that_is_down_is_skipped_at_once(fake, down_endpoint):
    with Client([down_endpoint, fake.endpoint], timeout=5.0, connect_timeout=3.0) as client:
        for i in range(6):
            started = time.monotonic()
            assert client.generate(f"p{i}")["text"] == f"echo: p{i}"
            # Trying the down one would take connect_timeout (3 s) first.
            assert time.monotonic() - started < 2.0
    assert generates(fake) == 6


def test_every_daemon_down_is_unavailable_naming_each(down_endpoint, tmp_path):
    other = down_endpoint.replace("nobody", "nobody-else")
    with Client([down_endpoint, other], connect_timeout=0.3) as client, \
            pytest.raises(Unavailable) as err:
        client.generate("hi")
    assert f"no socket file {down_endpoint[len('ipc://'):]}" in err.value.message
    assert f"no socket file {other[len('ipc://'):]}" in err.value.message


def test_a_request_a_daemon_took_and_lost_fails_once_and_is_not_sent_again(make_fake):
    a, b = make_fake(), make_fake()
    for fake in (a, b):
        fake.handler = lambda request, fake=fake: (
            fake.VANISH if request.op == "generate" else fake.default_handler(request))
    with Client([a.endpoint, b.endpoint], timeout=10.0) as client:
        with pytest.raises(Unavailable, match="closed the connection before answering"):
            client.generate("once")
    assert generates(a) + generates(b) == 1


def test_a_stream_goes_to_one_daemon_and_its_cancel_follows_it(make_fake):
    a, b = make_fake(), make_fake()
    with Client([a.endpoint, b.endpoint], timeout=5.0) as client:
        assert list(client.stream("one two")) == ["echo: ", "one ", "two "]
        for fake in (a, b):   # hold the next stream, wherever it goes
            fake.handler = lambda request, fake=fake: (
                None if request.op == "generate" else fake.default_handler(request))
        with pytest.raises(RequestTimeout):
            next(client.stream("held", timeout=0.2))
    held = [(fake, r) for fake in (a, b) for r in fake.received if r.args.get("prompt") == "held"]
    assert len(held) == 1
    holder, request = held[0]
    assert [cancel.args["id"] for cancel in holder.cancels(1)] == [request.id]
    other = b if holder is a else a
    assert not [r for r in other.received if r.op == "cancel"]


def test_a_forked_child_spreads_on_sockets_and_counts_of_its_own(make_fake, reap_child):
    a, b = make_fake(), make_fake()
    for fake in (a, b):
        fake.handler = lambda request, fake=fake: (
            None if request.args.get("prompt") == "held" else fake.default_handler(request))
    with Client([a.endpoint, b.endpoint], timeout=10.0) as client:
        results: list[str] = []
        held = threading.Thread(target=lambda: results.append(client.generate("held")["text"]))
        held.start()
        deadline = time.monotonic() + 5
        while not (holder := next((f for f in (a, b) if generates(f)), None)):
            assert time.monotonic() < deadline, "the held request did not arrive"
            time.sleep(0.005)
        request = holder.wait_for(1, op="generate")[0]   # the parent has one open there
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            code = 1
            try:
                if client._channels.chooser.outstanding() != [0, 0]:
                    code = 2      # the parent's open request is not the child's
                else:
                    wait_connected(client)
                    texts = [client.generate(f"child {i}", timeout=2.0)["text"]
                             for i in range(2)]
                    code = 0 if texts == ["echo: child 0", "echo: child 1"] else 3
            finally:
                os._exit(code)
        assert reap_child(pid) == 0
        holder.send(request, request.ok(holder.generation_result("released")))
        held.join(10)
    # The child alternated between the two (ties in turn), the parent held one.
    assert results == ["released"] and generates(holder) == 2
    assert generates(b if holder is a else a) == 1


def test_admin_ops_need_one_endpoint_named(make_fake):
    a, b = make_fake(), make_fake()
    with Client([a.endpoint, b.endpoint]) as client:
        with pytest.raises(ValueError, match=r"client.at\(ENDPOINT\).restart\(\.\.\.\)"):
            client.restart()
        with pytest.raises(ValueError, match=r"client.at\(ENDPOINT\).pull\(\.\.\.\)"):
            client.pull("llama3.1:8b")
        assert client.at(b.endpoint).restart()["op"] == "restart"
        assert client.at(b.endpoint) is client.at(b.endpoint)
        with pytest.raises(ValueError, match="not one of this client's endpoints"):
            client.at("ipc:///elsewhere.sock")
        per_endpoint = client.at(a.endpoint)
    assert [r.op for r in b.received] == ["restart"] and per_endpoint.closed


def test_legacy_availability_is_any_daemon_that_serves(fake, down_endpoint):
    client = OllamaClient(socket=[down_endpoint, fake.endpoint], connect_timeout=0.3)
    fake.handler = lambda request: (
        [request.ok({"status": "healthy", "healthy": True, "reasons": []})]
        if request.op == "health" else
        [request.ok({"health": {"status": "ok", "reasons": []}, "daemon": {"model": "m:1"}})]
        if request.op == "status" else
        [request.ok({"models": [{"name": "m:1"}]})] if request.op == "models"
        else fake.default_handler(request))
    try:
        assert client.is_available() is True
        report = client.health_check()
    finally:
        client.shutdown()
    assert report["status"] == "healthy" and report["available_models"] == ["m:1"]


def test_the_async_client_spreads_and_skips_a_down_daemon(make_fake, down_endpoint):
    a, b = make_fake(), make_fake()
    held: list = []
    lock = threading.Lock()

    def holding(fake):
        """Hold the concurrent ones until all 8 are open, so that each choice saw the
        others open (answered at once, the counts would depend on timing)."""
        def handler(request):
            if not request.args.get("prompt", "").startswith("c"):
                return fake.default_handler(request)
            with lock:
                held.append((fake, request))
                if len(held) == 8:
                    for owner, waiting in held:
                        owner.send(waiting, waiting.ok(owner.generation_result("done")))
            return None
        return handler
    a.handler, b.handler = holding(a), holding(b)

    async def main() -> list[str]:
        async with AsyncClient([a.endpoint, down_endpoint, b.endpoint], timeout=5.0,
                               connect_timeout=3.0) as client:
            channels = client._channels.current().channels
            deadline = time.monotonic() + 5    # as wait_connected, for the two that are up
            while not (channels[0].connected() and channels[2].connected()):
                assert time.monotonic() < deadline, "the client did not connect"
                await asyncio.sleep(0.005)
            started = time.monotonic()
            texts = [(await client.generate(f"s{i}"))["text"] for i in range(4)]
            assert time.monotonic() - started < 2.0       # the down one cost nothing
            texts += [r["text"] for r in await asyncio.gather(
                *[client.generate(f"c{i}") for i in range(8)])]
            return texts
    texts = asyncio.run(main())
    assert texts == [f"echo: s{i}" for i in range(4)] + ["done"] * 8
    assert generates(a) == generates(b) == 6
