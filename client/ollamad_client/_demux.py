"""The requests open on one socket and the replies read for them.

Many requests share one DEALER socket: every blocking call and stream of a
thread (``Client``), or every coroutine of an event loop (``AsyncClient``).
Whoever reads the socket files each reply in its request's mailbox, by id;
a reply whose id has no mailbox (a request that ended, timed out or was
cancelled, or a stranger) is dropped. Ids are unique per request, so a late
reply can never be taken for a newer request.

:class:`OpenRequests` is only bookkeeping: no socket, no lock, no waiting.
The channels (``_channel.Channel``, ``_async_channel.AsyncChannel``) add
those, each in its own way, and serialise every call into it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Union

from . import protocol
from ._calls import encode_cancel
from .errors import OllamadError

#: What a mailbox holds: replies from the daemon, or an error that ends the
#: request without one (the connection that carried it was lost).
Mail = Union[protocol.Reply, OllamadError]


class RequestAbandoned(Exception):
    """The request was cancelled while its reader waited (a stream closed by
    another thread or task, or by the client's ``close()``); never reaches users."""


class _Mailbox:
    __slots__ = ("mail", "stream")

    def __init__(self, stream: bool):
        self.mail: deque[Mail] = deque()
        #: Streams are cancelled when their client closes; calls are left to finish.
        self.stream = stream


class OpenRequests:
    """Mailboxes of the requests awaiting their final reply, and the cancels to send.

    ``tally``, if given, hears +1 when a request opens and -1 when it closes
    (how a client with several endpoints counts each one's open requests).
    """

    def __init__(self, tally: Callable[[int], None] | None = None) -> None:
        self._mailboxes: dict[str, _Mailbox] = {}
        self._cancels: list[bytes] = []
        self._tally = tally

    def __bool__(self) -> bool:
        """Whether any request is still open."""
        return bool(self._mailboxes)

    def __contains__(self, request_id: str) -> bool:
        """Whether the request is open here."""
        return request_id in self._mailboxes

    def open(self, request_id: str, *, stream: bool = False) -> None:
        self._mailboxes[request_id] = _Mailbox(stream)
        if self._tally is not None:
            self._tally(1)

    def _close(self, request_id: str) -> bool:
        """Remove the request's mailbox; whether it was open."""
        if self._mailboxes.pop(request_id, None) is None:
            return False
        if self._tally is not None:
            self._tally(-1)
        return True

    def deliver(self, frame: bytes) -> str | None:
        """File one frame from the daemon; the id it was filed under, or ``None`` if dropped."""
        try:
            reply = protocol.decode_reply(frame)
        except protocol.ProtocolError:
            return None
        mailbox = self._mailboxes.get(reply.id) if isinstance(reply.id, str) else None
        if mailbox is None:
            return None
        mailbox.mail.append(reply)
        return reply.id

    def fail_all(self, error: OllamadError) -> None:
        """End every open request with ``error`` (the connection that carried them is gone)."""
        # Over a snapshot: a stream's finalizer (garbage collection) may
        # abandon a request in the middle of this, in this very thread.
        for mailbox in list(self._mailboxes.values()):
            mailbox.mail.append(error)

    def take(self, request_id: str) -> protocol.Reply | None:
        """The request's next reply, ``None`` if none has come yet.

        A final reply (or an error) closes the request. Raises
        :class:`RequestAbandoned` if the request was cancelled meanwhile.
        """
        mailbox = self._mailboxes.get(request_id)
        if mailbox is None:
            raise RequestAbandoned(request_id)
        if not mailbox.mail:
            return None
        mail = mailbox.mail.popleft()
        if isinstance(mail, OllamadError) or mail.final:
            self._close(request_id)
        if isinstance(mail, OllamadError):
            raise mail
        return mail

    def abandon(self, request_id: str) -> bool:
        """Close the request if it is open and queue a ``cancel`` for it; whether it was open."""
        if not self._close(request_id):
            return False
        self._cancels.append(encode_cancel(request_id))
        return True

    def abandon_streams(self) -> None:
        """Cancel every open stream (its client is closing); calls stay open to finish."""
        for request_id in list(self._mailboxes):  # a snapshot, as in fail_all
            mailbox = self._mailboxes.get(request_id)
            if mailbox is not None and mailbox.stream:
                self.abandon(request_id)

    def take_cancels(self) -> list[bytes]:
        """The ``cancel`` frames queued since the last call, to send now."""
        if not self._cancels:
            return []
        cancels, self._cancels = self._cancels, []
        return cancels
