"""The asyncio client: :class:`AsyncClient` and its :class:`AsyncStream`.

All calls and streams of a client on one event loop share one socket
(``_async_channel``), replies told apart by request id. A call or stream
the client gives up on is cancelled on the daemon with a ``cancel`` op over
that socket: the task was cancelled, its time-out passed, or the stream was
closed or garbage-collected before its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Unpack

from . import protocol
from ._async_channel import LoopChannels, LoopEndpointChannels
from ._calls import (Call, ChatOptions, ClientBase, DaemonLimits, GenerationOptions, finish,
                     join_batch, join_embeddings, may_split_embed, split_batch, split_embed)
from ._demux import RequestAbandoned
from ._stream_base import StreamBase
from .errors import OllamadError


class AsyncClient(ClientBase):
    """The asyncio counterpart of :class:`~ollamad_client.Client`: same
    constructor, same methods, awaited (streams are ``async for``).

    Any number of coroutines may share one client; on each event loop it
    uses one socket. Cancelling a task that awaits a call cancels the
    request on the daemon. Several endpoints are shared out as by ``Client``.
    """

    def _init_transport(self) -> None:
        self._channels: LoopChannels | LoopEndpointChannels = \
            LoopChannels(self.endpoint, self.curve) if len(self.endpoints) == 1 \
            else LoopEndpointChannels(self.endpoints, self.curve)

    async def request(self, op: str, args: Mapping[str, Any] | None = None, *,
                      timeout: float | None = None) -> dict[str, Any]:
        """See :meth:`Client.request`."""
        return await self._run(self._call(op, args, timeout))

    async def generate(self, prompt: str, *, timeout: float | None = None,
                       **generation: Unpack[GenerationOptions]) -> dict[str, Any]:
        """See :meth:`Client.generate`."""
        return await self._run(self._generation_call("generate", "prompt", prompt, generation,
                                                     timeout))

    def stream(self, prompt: str, *, timeout: float | None = None,
               **generation: Unpack[GenerationOptions]) -> AsyncStream:
        """See :meth:`Client.stream`; iterate with ``async for``."""
        return self._stream(self._generation_call("generate", "prompt", prompt, generation,
                                                  timeout, stream=True))

    async def chat(self, messages: Sequence[Mapping[str, Any]], *, timeout: float | None = None,
                   **generation: Unpack[ChatOptions]) -> dict[str, Any]:
        """See :meth:`Client.chat`."""
        return await self._run(self._generation_call("chat", "messages", list(messages),
                                                     generation, timeout))

    def stream_chat(self, messages: Sequence[Mapping[str, Any]], *,
                    timeout: float | None = None,
                    **generation: Unpack[ChatOptions]) -> AsyncStream:
        """See :meth:`Client.stream_chat`; iterate with ``async for``."""
        return self._stream(self._generation_call("chat", "messages", list(messages), generation,
                                                  timeout, stream=True))

    async def batch(self, prompts: Sequence[str], *, timeout: float | None = None,
                    **generation: Unpack[GenerationOptions]) -> list[dict[str, Any] | OllamadError]:
        """See :meth:`Client.batch`."""
        call = self._batch_call(prompts, generation, timeout)
        if not call.args["prompts"]:
            return []
        try:
            calls = split_batch(call, await self._daemon_limits(timeout))
        except OllamadError as exc:
            return [exc] * len(call.args["prompts"])
        return join_batch(calls, [await self._settled(call) for call in calls])

    async def embed(self, input: str | Sequence[str], *, model: str | None = None,
                    timeout: float | None = None, priority: str | None = None,
                    profile: str | None = None) -> list[list[float]]:
        """See :meth:`Client.embed`."""
        call = self._embed_call(input, model, timeout, priority, profile)
        calls = split_embed(call, await self._daemon_limits(timeout)) if may_split_embed(call) \
            else [call]
        return join_embeddings([await self._run(call) for call in calls])

    async def models(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await self.request("models", timeout=timeout)

    async def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await self.request("health", timeout=timeout)

    async def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await self.request("status", timeout=timeout)

    async def metrics(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await self.request("metrics", timeout=timeout)

    async def gpu(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await self.request("gpu", timeout=timeout)

    async def ping(self, *, timeout: float | None = None) -> dict[str, Any]:
        """See :meth:`Client.ping`."""
        return await self.request("ping", timeout=timeout)

    async def restart(self, reason: str | None = None, *,
                      timeout: float | None = None) -> dict[str, Any]:
        """See :meth:`Client.restart`."""
        return await self._run(self._restart_call(reason, timeout))

    def pull(self, model: str, *, insecure: bool = False,
             timeout: float | None = None) -> AsyncPullStream:
        """See :meth:`Client.pull`; iterate with ``async for``."""
        return AsyncPullStream(self, self._pull_call(model, insecure, timeout))

    def close(self) -> None:
        """Refuse further calls and cancel open streams; calls in flight finish,
        then the sockets close (those of clients made by :meth:`at` too).
        Idempotent; from any thread."""
        self._close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- the exchange -------------------------------------------------------

    async def _run(self, call: Call) -> Any:
        outgoing = self._encode(call)
        channel = self._channels.current()
        try:
            await channel.start(outgoing, self.connect_timeout)
            reply = await channel.receive(outgoing)
            while not reply.final:  # chunks only come to streams; skip any
                reply = await channel.receive(outgoing)
        except BaseException:  # our time-out, or the task was cancelled (no-op if not open)
            channel.abandon(outgoing.request_id)
            raise
        return finish(call, reply)

    async def _daemon_limits(self, timeout: float | None) -> DaemonLimits:
        if self._limits is None:
            self._limits = DaemonLimits.from_ping(await self.ping(timeout=timeout))
        return self._limits

    async def _settled(self, call: Call) -> Any:
        try:
            return await self._run(call)
        except OllamadError as exc:
            return exc

    def _stream(self, call: Call) -> AsyncStream:
        return AsyncStream(self, call)


class AsyncStream(StreamBase):
    """The asyncio counterpart of :class:`~ollamad_client.Stream`.

    ``async for piece in stream``; ``stream.result`` afterwards; ``async for
    pieces in stream.chunks()`` for the reasoning pieces too. Nothing is
    sent until the first iteration. Ending it early cancels the request on
    the daemon: :meth:`aclose`/:meth:`close`, leaving ``async with``, the
    iterating task being cancelled, or garbage collection of an unfinished
    stream (``break`` out of ``async for`` leaves it to the collector, so
    prefer ``async with``). Iterate it on the loop that started it.
    """

    def __init__(self, client: AsyncClient, call: Call):
        super().__init__(call)
        self._client = client

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> str:
        while (pieces := await self._next_pieces()) is not None:
            if "text" in pieces:
                return pieces["text"]
        raise StopAsyncIteration

    async def chunks(self) -> AsyncIterator[dict[str, str]]:
        """See :meth:`Stream.chunks <ollamad_client.Stream.chunks>`."""
        while (pieces := await self._next_pieces()) is not None:
            if pieces:
                yield pieces

    async def _next_pieces(self) -> dict[str, str] | None:
        if self._done:
            return None
        try:
            if self._outgoing is None:
                outgoing = self._client._encode(self._call)
                channel = self._client._channels.current()
                self._opening(channel, outgoing)
                await channel.start(outgoing, self._client.connect_timeout, stream=True)
            reply = await self._channel.receive(self._outgoing)
        except RequestAbandoned:  # closed meanwhile, by another task or AsyncClient.close()
            self._done = True
            return None
        except BaseException:
            self.close()
            raise
        return self._pieces(reply)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class AsyncPullStream(AsyncStream):
    """The asyncio counterpart of :class:`~ollamad_client.PullStream`."""

    async def __anext__(self) -> dict[str, Any]:  # type: ignore[override]
        while (progress := await self._next_pieces()) is not None:
            if progress:
                return progress
        raise StopAsyncIteration

    def _chunk(self, reply: protocol.Reply) -> dict[str, Any]:
        return dict(reply.chunk) if isinstance(reply.chunk, Mapping) else {}
