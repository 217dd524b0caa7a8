"""A scripted fake ollamad for the client tests.

:class:`FakeDaemon` is a real ZeroMQ ROUTER socket served by a helper
thread, bound to an OS-chosen tcp port (or an ipc path in a private temporary
directory). Each test scripts it through ``fake.handler``: a function that
gets each :class:`Received` request and returns the frames to send back at
once (none to hold the request; :data:`VANISH` to close the socket and stop,
as a crashed daemon would). Frames can also be sent later with
:meth:`FakeDaemon.send`, from any thread.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

from ollamad_client import protocol

#: Returned by a handler: close the ROUTER socket and stop serving.
VANISH = object()

Handler = Callable[["Received"], "Iterable[bytes] | object | None"]


def generation_result(text: str, **overrides: Any) -> dict[str, Any]:
    """A generation result in the daemon's shape."""
    return {"text": text, "model": "llama3.1:8b", "done_reason": "stop", "prompt_tokens": 3,
            "completion_tokens": 2, "tokens": 2, "total_duration_ns": 5, "load_duration_ns": 1,
            "prompt_eval_duration_ns": 2, "eval_duration_ns": 2, "tokens_per_second": 42.0,
            "attempts": 1, "response_time": 0.25, **overrides}


@dataclass
class Received:
    """One request as the fake daemon received it."""

    identity: bytes
    frame: bytes
    message: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.message = json.loads(self.frame)

    @property
    def id(self) -> str:
        return self.message["id"]

    @property
    def op(self) -> str:
        return self.message["op"]

    @property
    def args(self) -> dict[str, Any]:
        return self.message.get("args", {})

    def ok(self, result: dict[str, Any]) -> bytes:
        return protocol.encode_result(self.id, result)

    def error(self, code: str, message: str, **extra: Any) -> bytes:
        body = {"code": code, "message": message,
                "retryable": protocol.ErrorCode(code).retryable, **extra}
        return json.dumps({"v": 1, "id": self.id, "ok": False, "error": body}).encode()

    def chunk(self, text: str) -> bytes:
        return protocol.encode_chunk(self.id, {"text": text})


def default_handler(request: Received) -> list[bytes]:
    """Answer every op plausibly: generations echo their prompt.

    A ``cancel`` is answered as the daemon does for a request still open: the
    cancelled request's final ``cancelled`` reply, then ``{"cancelled": true}``
    (the client waits for neither: it must drop both).
    """
    args = request.args
    if request.op == "cancel":
        cancelled = protocol.encode_error(args["id"], protocol.Error.of(
            protocol.ErrorCode.CANCELLED, "cancelled by the client"))
        return [cancelled, request.ok({"cancelled": True})]
    if request.op == "generate":
        text = f"echo: {args['prompt']}"
    elif request.op == "chat":
        text = f"echo: {args['messages'][-1]['content']}"
    elif request.op == "batch":
        return [request.ok({"results": [{"ok": True, "result": generation_result(f"echo: {p}")}
                                        for p in args["prompts"]]})]
    elif request.op == "embed":
        inputs = [args["input"]] if isinstance(args["input"], str) else args["input"]
        return [request.ok({"model": args.get("model", "nomic-embed-text"),
                            "embeddings": [[float(len(s)), 0.5] for s in inputs],
                            "prompt_tokens": len(inputs)})]
    else:
        return [request.ok({"op": request.op, "args": args})]
    result = generation_result(text)
    if request.op == "chat":
        result["message"] = {"role": "assistant", "content": text}
    frames = []
    if request.message.get("stream"):
        frames = [request.chunk(word + " ") for word in text.split(" ")]
    return [*frames, request.ok(result)]


class FakeDaemon:
    """A ROUTER socket on a helper thread that answers as the test scripts it."""

    VANISH = VANISH
    default_handler = staticmethod(default_handler)
    generation_result = staticmethod(generation_result)

    def __init__(self, endpoint: str = "tcp"):
        """``endpoint``: "tcp" (an OS-chosen port), "ipc" (a private path) or an endpoint."""
        self._context = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._tempdir: tempfile.TemporaryDirectory | None = None
        if endpoint == "tcp":
            port = self._router.bind_to_random_port("tcp://127.0.0.1")
            self.endpoint = f"tcp://127.0.0.1:{port}"
        else:
            if endpoint == "ipc":
                # ipc paths must fit in sun_path (108 bytes): pytest's tmp_path may not.
                self._tempdir = tempfile.TemporaryDirectory(prefix="odc-")
                endpoint = f"ipc://{self._tempdir.name}/ollamad.sock"
            self.endpoint = endpoint
            self._router.bind(self.endpoint)
        self._monitor = self._router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.handler: Handler = default_handler
        self.received: list[Received] = []
        self.disconnects = 0
        self._changed = threading.Condition()
        self._outbox: queue.SimpleQueue[tuple[bytes, bytes]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-ollamad", daemon=True)
        self._thread.start()

    # -- scripting ----------------------------------------------------------

    def send(self, to: Received | bytes, frame: bytes) -> None:
        """Send ``frame`` to a request's peer (or a raw identity), from any thread."""
        self._outbox.put((to.identity if isinstance(to, Received) else to, frame))

    def wait_for(self, count: int, timeout: float = 5.0, *, op: str | None = None,
                 exclude: tuple[str, ...] = ()) -> list[Received]:
        """The first ``count`` requests (of ``op`` only, or not of the ops in
        ``exclude``), once they have arrived."""
        def matching() -> list[Received]:
            return [r for r in self.received
                    if (op is None or r.op == op) and r.op not in exclude]
        with self._changed:
            assert self._changed.wait_for(lambda: len(matching()) >= count, timeout), \
                f"fake daemon got {len(matching())} requests, expected {count}"
            return matching()[:count]

    def cancels(self, count: int, timeout: float = 5.0) -> list[Received]:
        """The first ``count`` ``cancel`` requests, once they have arrived."""
        return self.wait_for(count, timeout, op="cancel")

    def wait_for_disconnects(self, count: int, timeout: float = 5.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.disconnects >= count, timeout), \
                f"fake daemon saw {self.disconnects} disconnects, expected {count}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and release everything; idempotent."""
        self._stopping.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "fake daemon thread did not stop"
        if not self._context.closed:
            self._context.destroy(linger=0)
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    # -- the serving thread -------------------------------------------------

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                while not self._outbox.empty():
                    self._router.send_multipart(list(self._outbox.get()))
                events = dict(poller.poll(10))
                if self._monitor in events:
                    if parse_monitor_message(self._monitor.recv_multipart())["event"] \
                            == zmq.EVENT_DISCONNECTED:
                        with self._changed:
                            self.disconnects += 1
                            self._changed.notify_all()
                if self._router in events and self._answer(self._router.recv_multipart()):
                    return
        finally:
            # Stop the monitor before closing its reader: libzmq emits monitor
            # events with a blocking send, which would stall the I/O thread.
            self._router.disable_monitor()
            self._monitor.close(linger=0)
            self._router.close(linger=0)

    def _answer(self, frames: list[bytes]) -> bool:
        """Handle one request; True when the script says to vanish."""
        identity, frame = frames[0], frames[-1]
        request = Received(identity, frame)
        with self._changed:
            self.received.append(request)
            self._changed.notify_all()
        replies = self.handler(request)
        if replies is VANISH:
            return True
        for reply in replies or ():
            self._router.send_multipart([identity, reply])
        return False


@pytest.fixture
def make_fake():
    """Start fake daemons (see ``FakeDaemon``); all are stopped at teardown."""
    started: list[FakeDaemon] = []

    def make(endpoint: str = "tcp") -> FakeDaemon:
        started.append(FakeDaemon(endpoint))
        return started[-1]
    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def fake(make_fake):
    return make_fake()


@pytest.fixture
def ipc_fake(make_fake):
    return make_fake("ipc")


@pytest.fixture
def client(fake):
    from ollamad_client import Client
    with Client(fake.endpoint, timeout=5.0, connect_timeout=0.5) as c:
        yield c


@pytest.fixture
def down_endpoint():
    """An ipc endpoint nobody listens on."""
    with tempfile.TemporaryDirectory(prefix="odc-") as directory:
        yield f"ipc://{directory}/nobody.sock"


@pytest.fixture
def reap_child():
    """Wait (with a deadline) for a forked child; returns its exit code."""
    def reap(pid: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"forked child {pid} did not exit within {timeout} s")
            time.sleep(0.01)
    return reap


@pytest.fixture
def fresh_singleton():
    """No process-wide OllamaClient before or after the test."""
    from ollamad_client import _legacy

    def reset() -> None:
        if _legacy._shared is not None:
            _legacy._shared.shutdown()
    reset()
    yield
    reset()
