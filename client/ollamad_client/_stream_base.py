"""What :class:`~ollamad_client.Stream` and :class:`~ollamad_client.AsyncStream`
share: the call, the channel it went out on, its result, and cancelling it
when it ends early. Only iterating (blocking or awaited) is theirs."""

from __future__ import annotations

import dataclasses
import time
import weakref
from typing import Any, Protocol

from . import protocol
from ._calls import REPLY_GRACE, Call, Outgoing, chunk_pieces, finish


class _Channel(Protocol):
    def abandon(self, request_id: str) -> None: ...
    def abandon_soon(self, request_id: str) -> None: ...


class StreamBase:
    def __init__(self, call: Call):
        self._call = call
        self._outgoing: Outgoing | None = None
        self._channel: Any = None
        self._cancel: weakref.finalize | None = None
        self._done = False
        #: The final generation result, once the stream is exhausted.
        self.result: dict[str, Any] | None = None

    def _opening(self, channel: _Channel, outgoing: Outgoing) -> None:
        """Call just before sending: from now on, garbage collection cancels the request.

        Before the send, so that no interruption can slip in between.
        """
        self._channel, self._outgoing = channel, outgoing
        self._cancel = weakref.finalize(self, channel.abandon_soon, outgoing.request_id)

    def _pieces(self, reply: protocol.Reply) -> dict[str, str] | None:
        """A chunk's pieces (see :func:`chunk_pieces`); ``None`` once the final reply has
        set ``result`` (or raised its error)."""
        if not reply.final:
            if self._call.per_chunk and self._outgoing is not None:
                # A chunk is progress: the wait for the next one starts again.
                self._outgoing = dataclasses.replace(
                    self._outgoing, deadline=time.monotonic() + self._call.timeout + REPLY_GRACE)
            return self._chunk(reply)
        self._done = True
        if self._cancel is not None:
            self._cancel.detach()  # nothing left to cancel; let go of the channel
        self.result = finish(self._call, reply)
        return None

    def _chunk(self, reply: protocol.Reply) -> dict[str, Any]:
        """What a chunk gives the iterator: a generation's text and reasoning pieces."""
        return chunk_pieces(reply)

    def close(self) -> None:
        """Stop the stream, cancelling it on the daemon if it is unfinished; idempotent."""
        self._done = True
        if self._cancel is not None and self._cancel.detach() is not None:
            assert self._outgoing is not None
            self._channel.abandon(self._outgoing.request_id)
