"""The blocking client: :class:`Client` and its :class:`Stream`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Unpack

from . import protocol
from ._calls import (Call, ChatOptions, ClientBase, DaemonLimits, GenerationOptions, finish,
                     join_batch, join_embeddings, may_split_embed, split_batch, split_embed)
from ._channel import EndpointChannels, ThreadChannels
from ._demux import RequestAbandoned
from ._stream_base import StreamBase
from .errors import OllamadError


class Client(ClientBase):
    """Blocking client for ollamad; failures raise :class:`OllamadError` subclasses.

    ``Client(socket=None, *, model=None, timeout=None, connect_timeout=1.0,
    max_message_bytes=4 MiB, app=None, server_key=None, client_key=None)``: ``socket``
    is the daemon's ZeroMQ endpoint (default ``$OLLAMAD_SOCKET`` or
    ``ipc:///run/ollamad/ollamad.sock``), or several daemons' (a list, or one
    comma-separated string, in ``$OLLAMAD_SOCKET`` too): each request then goes
    to the one of those with a connection on which this client has the fewest
    requests open (in turn when even), and one that is down is skipped until it
    is back;
    ``model`` the model for calls that name none (default: the daemon's);
    ``timeout`` each request's default deadline in seconds (none given: 60 s,
    or the profile's for a call naming one); ``connect_timeout`` how long a
    call waits for a connection before raising ``Unavailable``; ``app`` the
    app name the daemon accounts this client's requests to and shares slots
    by (default ``$OLLAMAD_APP``, else the program's name); ``server_key`` (the
    daemon's public key in Z85, or its ``server.key`` file; default
    ``$OLLAMAD_SERVER_KEY``) and ``client_key`` (this client's ``NAME.key_secret``
    file; default ``$OLLAMAD_CLIENT_KEY``) make a tcp connection a CURVE client:
    encrypted, the daemon proven by its key, this client known by its key's
    name. A bad key raises ``ValueError`` here; a daemon that refuses the key
    is ``Unavailable`` after ``connect_timeout``.

    Share one client between threads freely: each thread gets one socket,
    which all its calls and streams share (replies are told apart by request
    id, unique per request, so a late reply can never be taken for a newer
    request). A call the client gives up on (its time-out passed without even
    the daemon's own ``timeout`` answer, or the wait was interrupted, for
    example by ``KeyboardInterrupt``) is cancelled: the client sends the
    daemon a ``cancel`` for it on the same socket, and the daemon stops its
    work on Ollama. Safe after ``fork()``: the child makes its own sockets.

    With several endpoints each thread has a socket to each; ``status``,
    ``health``, ``models`` and the other queries go to one of them as any
    request does, :meth:`at` gives a client of one endpoint (to ask each
    daemon, or ``restart`` one), and ``restart`` itself refuses to guess.
    A request a daemon took and then lost (it died) fails with
    ``Unavailable``: it is never sent again, to another daemon or the same.
    """

    def _init_transport(self) -> None:
        self._channels: ThreadChannels | EndpointChannels = \
            ThreadChannels(self.endpoint, self.curve) if len(self.endpoints) == 1 \
            else EndpointChannels(self.endpoints, self.curve)

    # -- the generic call ---------------------------------------------------

    def request(self, op: str, args: Mapping[str, Any] | None = None, *,
                timeout: float | None = None) -> dict[str, Any]:
        """Send any op with ``args``; returns its result object."""
        return self._run(self._call(op, args, timeout))

    # -- generation ---------------------------------------------------------

    def generate(self, prompt: str, *, timeout: float | None = None,
                 **generation: Unpack[GenerationOptions]) -> dict[str, Any]:
        """Generate a completion; returns the daemon's generation result
        (``text``, ``thinking`` (a thinking model's reasoning, else ``""``),
        ``model``, ``done_reason``, ``prompt_tokens``, ``completion_tokens``,
        ``tokens``, ``tokens_per_second``, ``attempts``, ``response_time`` and
        Ollama's durations)."""
        return self._run(self._generation_call("generate", "prompt", prompt, generation, timeout))

    def stream(self, prompt: str, *, timeout: float | None = None,
               **generation: Unpack[GenerationOptions]) -> Stream:
        """Like :meth:`generate`, as an iterator of text pieces; ``.result`` at the end
        (:meth:`Stream.chunks` gives the reasoning pieces too)."""
        return Stream(self, self._generation_call("generate", "prompt", prompt, generation,
                                                  timeout, stream=True))

    def chat(self, messages: Sequence[Mapping[str, Any]], *, timeout: float | None = None,
             **generation: Unpack[ChatOptions]) -> dict[str, Any]:
        """Chat completion over ``messages``; the result adds ``message``
        (``{"role": "assistant", "content"}``, with ``thinking`` and ``tool_calls``
        when there are any: append it to ``messages`` to go on) and ``tool_calls``
        (the calls the model makes to the functions in ``tools``; ``[]`` for none).

        A message is ``{"role", "content"}`` (role ``system``, ``user``,
        ``assistant`` or ``tool``) and may carry ``images`` (base64 strings),
        ``thinking`` and ``tool_calls`` (an earlier answer's), or ``tool_name``
        (a tool's answer: ``{"role": "tool", "tool_name": "get_weather",
        "content": "12 C"}``)."""
        return self._run(self._generation_call("chat", "messages", list(messages), generation,
                                               timeout))

    def stream_chat(self, messages: Sequence[Mapping[str, Any]], *, timeout: float | None = None,
                    **generation: Unpack[ChatOptions]) -> Stream:
        """Like :meth:`chat`, as an iterator of text pieces; ``.result`` at the end
        (with the ``tool_calls``; :meth:`Stream.chunks` gives the reasoning pieces too)."""
        return Stream(self, self._generation_call("chat", "messages", list(messages), generation,
                                                  timeout, stream=True))

    def batch(self, prompts: Sequence[str], *, timeout: float | None = None,
              **generation: Unpack[GenerationOptions]) -> list[dict[str, Any] | OllamadError]:
        """Generate for every prompt; one item per prompt, in order: the result,
        or the :class:`OllamadError` for that prompt (never raised).

        Prompts beyond the daemon's ``max_batch`` (from its ``ping``, asked
        once per client; 256 if it does not say) go as several batch ops, one
        after another (one op already keeps all of the daemon's workers busy);
        ``timeout`` applies to each op. If even the ``ping`` fails, every
        prompt gets its error.
        """
        call = self._batch_call(prompts, generation, timeout)
        if not call.args["prompts"]:
            return []
        try:
            calls = split_batch(call, self._daemon_limits(timeout))
        except OllamadError as exc:
            return [exc] * len(call.args["prompts"])
        return join_batch(calls, [self._settled(call) for call in calls])

    def embed(self, input: str | Sequence[str], *, model: str | None = None,
              timeout: float | None = None, priority: str | None = None,
              profile: str | None = None) -> list[list[float]]:
        """One embedding vector per input string (``priority`` and ``profile`` as for
        :meth:`generate`).

        A list longer than the daemon's ``max_embed_inputs`` (from its
        ``ping``; no limit if it does not say) goes as several embed ops, one
        after another; the vectors come back in input order.
        """
        call = self._embed_call(input, model, timeout, priority, profile)
        calls = split_embed(call, self._daemon_limits(timeout)) if may_split_embed(call) \
            else [call]
        return join_embeddings([self._run(call) for call in calls])

    # -- queries ------------------------------------------------------------

    def models(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``{"models": [...], "loaded": [...]}``: Ollama's installed and loaded models."""
        return self.request("models", timeout=timeout)

    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``{"healthy", "status", "reasons", "ollama", "gpu"}``."""
        return self.request("health", timeout=timeout)

    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``{"daemon", "pool", "ollama", "gpu", ...}``: the daemon's state."""
        return self.request("status", timeout=timeout)

    def metrics(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Request counters and latency figures."""
        return self.request("metrics", timeout=timeout)

    def gpu(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The latest GPU snapshot."""
        return self.request("gpu", timeout=timeout)

    def ping(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``{"protocol", "version", "pid", "max_message_bytes", "max_batch",
        "max_embed_inputs", "max_timeout"}``: the daemon's limits (an older
        daemon may leave some out)."""
        return self.request("ping", timeout=timeout)

    def restart(self, reason: str | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        """Admin op: restart Ollama. Raises ``Forbidden`` for non-admin callers."""
        return self._run(self._restart_call(reason, timeout))

    def pull(self, model: str, *, insecure: bool = False,
             timeout: float | None = None) -> PullStream:
        """Admin op: have Ollama pull ``model`` (``HOST:PORT/NAMESPACE/MODEL:TAG`` pulls
        from that registry; ``insecure`` lets Ollama speak plain http to it). Iterate the
        stream for Ollama's progress (``{"status", "digest", "total", "completed"}``);
        ``.result`` is ``{"model", "status": "success", "allowed"}`` at the end, or iterating
        raises the pull's error (``Forbidden`` for non-admin callers). ``timeout`` bounds
        each wait for the next progress line (default: the daemon's
        ``ollama.pull_stall_timeout``), never the whole pull; closing the stream early stops
        the pull."""
        return PullStream(self, self._pull_call(model, insecure, timeout))

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Close every socket of this client; later calls raise ``Unavailable``.

        Idempotent, and safe from any thread while others are mid-call: a
        call whose request was sent gets its final reply, and each socket
        closes when the last call on it has ended; a call that had not sent
        its request yet fails with "closed". Open streams are cancelled (the
        daemon is told) and end, in whichever thread iterates them. Clients
        made by :meth:`at` close too.
        """
        self._close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the exchange -------------------------------------------------------

    def _run(self, call: Call) -> Any:
        outgoing = self._encode(call)
        channel = self._channels.current()
        try:
            channel.start(outgoing, self.connect_timeout)
            reply = channel.receive(outgoing)
            while not reply.final:  # chunks only come to streams; skip any
                reply = channel.receive(outgoing)
        except BaseException:
            # Our time-out, or an interruption (KeyboardInterrupt ...): the
            # daemon would go on generating for nobody. (A no-op if the
            # request is not open: a failed start, or a final reply.)
            channel.abandon(outgoing.request_id)
            raise
        return finish(call, reply)

    def _daemon_limits(self, timeout: float | None) -> DaemonLimits:
        if self._limits is None:
            self._limits = DaemonLimits.from_ping(self.ping(timeout=timeout))
        return self._limits

    def _settled(self, call: Call) -> Any:
        """The call's value, or the OllamadError it failed with."""
        try:
            return self._run(call)
        except OllamadError as exc:
            return exc


class Stream(StreamBase):
    """The text pieces of a streamed generation, as they arrive.

    Iterate it; after the last piece ``result`` holds the daemon's final
    generation result (or iteration raises the request's ``OllamadError``).
    Nothing is sent until the first ``next()``. A thinking model's reasoning
    is left out of the text pieces; :meth:`chunks` yields it too.

    A stream uses the socket of the thread that starts it (shared with that
    thread's other calls and streams). Ending it early cancels the request
    on the daemon, which stops generating: :meth:`close`, leaving a ``with``
    block, an error or interruption while waiting, or garbage collection of
    an unfinished stream; its leftover chunks are dropped. Any thread may
    iterate it (one at a time): the socket's threads take turns, so it stays
    correct, though a piece may then come one poll slice (0.1 s) later while
    the starting thread is busy on the same socket.
    """

    def __init__(self, client: Client, call: Call):
        super().__init__(call)
        self._client = client

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        while (pieces := self._next_pieces()) is not None:
            if "text" in pieces:
                return pieces["text"]
        raise StopIteration

    def chunks(self) -> Iterator[dict[str, str]]:
        """Every piece as it arrives, the reasoning included: dicts with ``"thinking"``
        and/or ``"text"`` (the reasoning comes first); ``result`` after the last."""
        while (pieces := self._next_pieces()) is not None:
            if pieces:
                yield pieces

    def _next_pieces(self) -> dict[str, str] | None:
        """The next chunk's pieces; ``None`` at the end."""
        if self._done:
            return None
        try:
            if self._outgoing is None:
                outgoing = self._client._encode(self._call)
                channel = self._client._channels.current()
                self._opening(channel, outgoing)
                channel.start(outgoing, self._client.connect_timeout, stream=True)
            reply = self._channel.receive(self._outgoing)
        except RequestAbandoned:  # closed meanwhile, from another thread or by Client.close()
            self._done = True
            return None
        except BaseException:
            self.close()
            raise
        return self._pieces(reply)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PullStream(Stream):
    """A pull's progress objects as Ollama sends them (see :meth:`Client.pull`)."""

    def __next__(self) -> dict[str, Any]:  # type: ignore[override]
        while (progress := self._next_pieces()) is not None:
            if progress:
                return progress
        raise StopIteration

    def _chunk(self, reply: protocol.Reply) -> dict[str, Any]:
        return dict(reply.chunk) if isinstance(reply.chunk, Mapping) else {}
