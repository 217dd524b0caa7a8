"""Request building and result shaping, shared by ``Client`` and ``AsyncClient``.

Nothing here touches a socket. A public method turns its arguments into a
:class:`Call` (op, args, timeout, and how to shape the result); the client
encodes it into an :class:`Outgoing` frame, sends it and waits in its own way
(blocking poll or ``await``), and :func:`finish` turns the final reply into
the method's return value or raises the matching :class:`OllamadError`.
Work too big for one op (long batches, long embed input lists) is split by
the limits the daemon reports in ``ping`` (:class:`DaemonLimits`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from . import protocol
from ._curve import CurveKeys, KeySource, curve_keys
from .errors import (InternalError, OllamadError, RequestTimeout, TooLarge, Unavailable,
                     from_error_object, from_wire)

#: Where the daemon listens unless told otherwise.
DEFAULT_ENDPOINT = "ipc:///run/ollamad/ollamad.sock"
#: Environment variable that overrides :data:`DEFAULT_ENDPOINT` (daemon, CLI and client alike).
SOCKET_ENV = "OLLAMAD_SOCKET"
#: Environment variable naming the app (the tenant's app name) when the code gives none.
APP_ENV = "OLLAMAD_APP"
#: Seconds the client waits beyond a request's own timeout: the daemon answers
#: ``timeout`` itself at the deadline, and that answer says more than silence.
REPLY_GRACE = 0.5
#: Most prompts per ``batch`` op when the daemon's ``ping`` does not say (its default).
DEFAULT_MAX_BATCH = 256
#: Deadline of a ``cancel`` request. Nobody waits for its answer: it is sent
#: and its reply dropped; the deadline only bounds the daemon's bookkeeping.
CANCEL_TIMEOUT = 5.0


class GenerationOptions(TypedDict, total=False):
    """Keyword arguments common to ``generate``, ``chat``, their streams and ``batch``.

    ``None`` means "not given": the daemon's default applies.

    - ``model``: Ollama model name (default: the client's ``model``, else the daemon's).
    - ``system``: system prompt.
    - ``temperature``: sampling temperature.
    - ``max_tokens``: most tokens to generate (Ollama's ``num_predict``; the daemon caps it).
    - ``format``: ``"json"`` or a JSON schema object.
    - ``options``: passed to Ollama (``seed``, ``stop``, ``num_ctx``, ``top_p`` ...);
      ``temperature``/``max_tokens`` win over it.
    - ``keep_alive``: how long Ollama keeps the model loaded: a Go duration with a unit
      (``"10m"``, ``"-1s"`` for ever) or a number of seconds; ``"300"`` is ``bad_request``.
    - ``think``: whether a thinking model reasons first (``True``, ``False`` or
      a level, ``"low"``/``"medium"``/``"high"``/``"max"``); Ollama's default is to think when the model
      can, and ``think`` for a model that cannot is ``bad_request``. The reasoning
      comes back in the result's ``thinking`` (and in streams, see ``Stream.chunks``).
    - ``priority``: the daemon's lane, ``"interactive"`` (the default, except for
      ``batch``) or ``"batch"``: interactive requests take free slots first.
    - ``profile``: a profile of the daemon's config (``"voice_eval"``): its
      temperature, max_tokens, priority, timeout ... apply where the call gives none.
    """

    model: str | None
    system: str | None
    temperature: float | None
    max_tokens: int | None
    format: str | Mapping[str, Any] | None
    options: Mapping[str, Any] | None
    keep_alive: str | float | None
    think: bool | str | None
    priority: str | None
    profile: str | None


class ChatOptions(GenerationOptions, total=False):
    """:class:`GenerationOptions` plus, for ``chat`` and ``stream_chat``:

    - ``tools``: functions the model may call, Ollama's (and OpenAI's) shape:
      ``{"type": "function", "function": {"name", "description", "parameters": <JSON
      schema>}}``. The calls come back in the result's ``tool_calls`` (and
      ``message.tool_calls``), ``[{"function": {"name", "arguments": {...}}}]``.
    """

    tools: Sequence[Mapping[str, Any]] | None


_GENERATION_KEYS = frozenset(GenerationOptions.__annotations__)
_CHAT_KEYS = frozenset(ChatOptions.__annotations__)

_ID_PREFIX = secrets.token_hex(4)
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """An id unique to this process and this request."""
    # The pid keeps ids unique across fork (a child inherits the counter); the
    # random prefix across processes that reuse a pid or share a tcp daemon.
    return f"{_ID_PREFIX}-{os.getpid()}-{next(_id_counter)}"


def default_endpoint() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_ENDPOINT


def parse_endpoints(socket: str | Sequence[str] | None) -> tuple[str, ...]:
    """The endpoints named by ``socket``: a list, or one string of comma-separated
    endpoints; ``None``: ``$OLLAMAD_SOCKET`` (a list too), else the default."""
    if socket is None or socket == "":
        socket = default_endpoint()
    parts = socket.split(",") if isinstance(socket, str) else list(socket)
    endpoints: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"an ollamad endpoint is a string, not {type(part).__name__}")
        endpoint = part.strip()
        if not endpoint:
            raise ValueError(f"empty endpoint in {socket!r}")
        if endpoint in endpoints:
            raise ValueError(f"endpoint {endpoint!r} is named twice in {socket!r}")
        endpoints.append(endpoint)
    if not endpoints:
        raise ValueError("no ollamad endpoint given")
    return tuple(endpoints)


def default_app() -> str:
    """``$OLLAMAD_APP``, else the program's name, in the characters an app name may have."""
    name = os.environ.get(APP_ENV) or os.path.basename(sys.argv[0] if sys.argv else "")
    if name in ("", "-c", "-m", "__main__.py"):
        name = "python"
    return re.sub(r"[^A-Za-z0-9._:@+/-]", "-", name)[:64]


def check_app(value: Any) -> str:
    if not (isinstance(value, str) and protocol.APP_NAME.fullmatch(value)):
        raise ValueError(f"app must be 1 to 64 letters, digits or ._:@+/- characters, "
                         f"not {value!r}")
    return value


def check_timeout(value: Any, name: str = "timeout") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value <= protocol.MAX_TIMEOUT:
        raise ValueError(f"{name} must be a number of seconds in (0, {protocol.MAX_TIMEOUT:g}], "
                         f"not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Call:
    """One op to send, and how to turn its result into the caller's value."""

    op: str
    args: Mapping[str, Any]
    timeout: float
    stream: bool = False
    shape: Callable[[dict[str, Any]], Any] = dict
    #: False: nobody chose the deadline; it is not sent, and the daemon's
    #: (a profile's, or 60 s, within the user's limit) applies.
    timeout_given: bool = True
    #: The timeout bounds each wait for the next chunk, not the whole call (a pull
    #: may take hours while its progress keeps coming).
    per_chunk: bool = False


@dataclass(frozen=True)
class Outgoing:
    """An encoded :class:`Call`, ready to send."""

    call: Call
    request_id: str
    frame: bytes
    #: ``time.monotonic()`` by which the final reply must have arrived.
    deadline: float

    def remaining_ms(self) -> int:
        """Milliseconds left until the deadline (0 when it has passed)."""
        return poll_ms(self.deadline - time.monotonic())


def poll_ms(seconds: float) -> int:
    """``seconds`` as a ZeroMQ poll time-out: whole milliseconds, rounded up, never negative."""
    return max(0, math.ceil(seconds * 1000))


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is an ``ipc://PATH`` or ``tcp://HOST:PORT`` endpoint, else a
    ValueError that says what it should look like (the CLI takes one endpoint)."""
    if "," in endpoint:
        raise ValueError(f"{endpoint!r} names several endpoints: name one (a comma-separated "
                         "list is for clients, which share requests out over the daemons)")
    scheme, sep, rest = endpoint.partition("://")
    if sep and scheme == "ipc" and rest:
        return endpoint
    if sep and scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if colon and host and port.isdigit() and 0 < int(port) < 65536:
            return endpoint
    hint = (f" (did you mean ipc://{endpoint}?)" if endpoint.startswith(("/", "."))
            else "")
    raise ValueError(f"{endpoint!r} is not an ollamad endpoint: use ipc:///PATH/TO/SOCKET or "
                     f"tcp://HOST:PORT{hint}")


def unreachable(endpoint: str, connect_timeout: float,
                curve: CurveKeys | None = None) -> Unavailable:
    """Why no connection came: the socket file's permissions, its absence, refused
    keys, or silence."""
    head = f"ollamad is not reachable at {endpoint}"
    if curve is not None and endpoint.startswith("tcp://"):
        return Unavailable(
            f"{head} (no connection within {connect_timeout:g} s): is the daemon running, "
            f"and does it accept this client's CURVE key {curve.public.decode()}? Its "
            f"authorized_clients must list that key, and the server key must be the "
            f"daemon's public key ({curve.server_public.decode()} here)")
    path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
    if path:
        try:
            os.stat(path)
        except PermissionError:
            return Unavailable(f"{head}: permission denied: this process may not enter "
                               f"{os.path.dirname(path) or '.'}, where the socket is")
        except FileNotFoundError:
            return Unavailable(f"{head}: there is no socket file {path}. Is the daemon running "
                               "(systemctl status ollamad)? Or point OLLAMAD_SOCKET / --socket "
                               "at the right one")
        except OSError:
            pass
        else:
            if not os.access(path, os.R_OK | os.W_OK):
                group = _group_name(path)
                return Unavailable(
                    f"{head}: permission denied on {path}: only its owner and group {group!r} "
                    f"may connect. Join the group (sudo usermod -aG {group} $USER), then log "
                    f"in again or run `newgrp {group}`: a new group counts only in new sessions")
    return Unavailable(f"{head} (no connection within {connect_timeout:g} s); is the daemon "
                       "running?")


def _group_name(path: str) -> str:
    gid = os.stat(path).st_gid
    try:
        import grp
        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return str(gid)


def went_away(endpoint: str) -> Unavailable:
    return Unavailable(f"ollamad at {endpoint} closed the connection before answering")


def no_reply(endpoint: str, outgoing: Outgoing) -> RequestTimeout:
    return RequestTimeout(f"no reply from ollamad at {endpoint} within "
                          f"{outgoing.call.timeout:g} s (+{REPLY_GRACE:g} s grace)")


def client_closed(endpoint: str) -> Unavailable:
    return Unavailable(f"this client of ollamad at {endpoint} is closed")


def encode_cancel(request_id: str) -> bytes:
    """A ``cancel`` request (with an id of its own) for the open request ``request_id``."""
    return protocol.encode_request(protocol.Request(new_request_id(), "cancel",
                                                    {"id": request_id}, CANCEL_TIMEOUT))


#: What a stream chunk may carry: reasoning and answer text.
CHUNK_KEYS = ("thinking", "text")


def chunk_pieces(reply: protocol.Reply) -> dict[str, str]:
    """A stream chunk's non-empty pieces, ``{"thinking": ...}`` and/or ``{"text": ...}``."""
    chunk = reply.chunk
    if not isinstance(chunk, Mapping):
        return {}
    return {key: chunk[key] for key in CHUNK_KEYS
            if isinstance(chunk.get(key), str) and chunk[key]}


def finish(call: Call, reply: protocol.Reply) -> Any:
    """The caller's value for a final reply, or raise the reply's error."""
    if reply.error is not None:
        raise from_wire(reply.error, reply.attempts)
    return call.shape(dict(reply.result or {}))


@dataclass(frozen=True)
class DaemonLimits:
    """The daemon's limits that decide how work is split, from its ``ping``."""

    max_batch: int = DEFAULT_MAX_BATCH
    #: ``None``: the daemon names no limit, so an input list goes as one op.
    max_embed_inputs: int | None = None

    @classmethod
    def from_ping(cls, result: Mapping[str, Any]) -> DaemonLimits:
        """Read them from a ``ping`` result; what is missing or nonsense keeps its default."""
        def limit(key: str) -> int | None:
            value = result.get(key)
            return value if type(value) is int and value >= 1 else None
        return cls(limit("max_batch") or DEFAULT_MAX_BATCH, limit("max_embed_inputs"))


def _split(call: Call, key: str, size: int | None,
           shape: Callable[[list[Any]], Callable[[dict[str, Any]], Any]] | None = None,
           ) -> list[Call]:
    """``call`` as consecutive calls carrying at most ``size`` items of ``args[key]`` each;
    ``shape(part)`` gives each part its own result shape (default: the call's)."""
    items = call.args[key]
    if size is None or len(items) <= size:
        return [call]
    parts = [items[i:i + size] for i in range(0, len(items), size)]
    return [dataclasses.replace(call, args={**call.args, key: part},
                                shape=shape(part) if shape else call.shape)
            for part in parts]


def split_batch(call: Call, limits: DaemonLimits) -> list[Call]:
    """A ``batch`` call as ops of at most ``limits.max_batch`` prompts, in order."""
    return _split(call, "prompts", limits.max_batch, shape=_batch_shape)


def may_split_embed(call: Call) -> bool:
    """Whether an ``embed`` call has more than one input (worth asking the daemon's limit)."""
    return not isinstance(call.args["input"], str) and len(call.args["input"]) > 1


def split_embed(call: Call, limits: DaemonLimits) -> list[Call]:
    """An ``embed`` call with an input list as ops of at most
    ``limits.max_embed_inputs`` inputs, in order."""
    return _split(call, "input", limits.max_embed_inputs)


def join_embeddings(parts: Sequence[list[list[float]]]) -> list[list[float]]:
    """The vectors of the embed ops, in input order."""
    return [vector for part in parts for vector in part]


def join_batch(calls: Sequence[Call], outcomes: Sequence[list[Any] | OllamadError]) -> list[Any]:
    """One item per prompt, in order, from the outcomes of the batch ops.

    An op that failed as a whole (daemon down, time-out, bad arguments)
    contributes its error once per prompt it carried, so the results of the
    ops that did succeed are never lost.
    """
    items: list[Any] = []
    for call, outcome in zip(calls, outcomes, strict=True):
        if isinstance(outcome, OllamadError):
            items.extend([outcome] * len(call.args["prompts"]))
        else:
            items.extend(outcome)
    return items


def _batch_items(result: dict[str, Any], expected: int) -> list[Any]:
    items = result.get("results")
    if not isinstance(items, list) or len(items) != expected:
        got = len(items) if isinstance(items, list) else "no"
        raise InternalError(f"the daemon answered {got} batch results for {expected} prompts")
    return [item["result"] if isinstance(item, dict) and item.get("ok") is True
            else from_error_object(item.get("error") if isinstance(item, dict) else None)
            for item in items]


def _batch_shape(prompts: Sequence[str]) -> Callable[[dict[str, Any]], list[Any]]:
    return functools.partial(_batch_items, expected=len(prompts))


def _embeddings(result: dict[str, Any]) -> list[list[float]]:
    vectors = result.get("embeddings")
    if not isinstance(vectors, list):
        raise InternalError("the daemon's embed result has no 'embeddings' list")
    return vectors


class ClientBase:
    """Configuration and request building shared by the sync and async clients."""

    def __init__(self, socket: str | Sequence[str] | None = None, *, model: str | None = None,
                 timeout: float | None = None, connect_timeout: float = 1.0,
                 max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
                 app: str | None = None, server_key: KeySource | None = None,
                 client_key: KeySource | None = None):
        #: The daemons' ZeroMQ endpoints (``ipc://...`` or ``tcp://host:port``),
        #: one unless the client was given several.
        self.endpoints = parse_endpoints(socket)
        #: The endpoints, joined by commas (the one endpoint, for most clients).
        self.endpoint = ",".join(self.endpoints)
        #: CURVE keys for tcp endpoints (arguments, else ``$OLLAMAD_SERVER_KEY`` and
        #: ``$OLLAMAD_CLIENT_KEY``); None: plain tcp. A bad key is a ValueError now.
        self.curve = curve_keys(server_key, client_key)
        self._key_sources = (server_key, client_key)    # for the clients :meth:`at` makes
        #: Model for generation calls that name none (``None``: the daemon's default).
        self.model = model
        #: The app this client's requests belong to (the daemon accounts and
        #: shares by it): ``app``, else ``$OLLAMAD_APP``, else the program's name.
        self.app = check_app(app) if app is not None else default_app()
        #: Default deadline of a request, in seconds (60 unless given; a request
        #: naming a profile then takes the profile's).
        self._timeout_given = timeout is not None
        self.timeout = check_timeout(timeout) if timeout is not None else protocol.DEFAULT_TIMEOUT
        #: How long a call waits for a connection to the daemon before raising ``Unavailable``.
        self.connect_timeout = check_timeout(connect_timeout, "connect_timeout")
        #: Largest request this client sends (the daemon disconnects bigger senders silently).
        self.max_message_bytes = int(max_message_bytes)
        self._closed = False
        #: Learnt from the daemon's ``ping`` on first need. No lock: two threads
        #: may both ask once, and a lock held across a call could be inherited
        #: locked by a forked child.
        self._limits: DaemonLimits | None = None
        #: Clients of one endpoint each, made by :meth:`at`.
        self._at: dict[str, Any] = {}
        self._init_transport()

    def _init_transport(self) -> None:
        """Set up the subclass's socket bookkeeping."""
        raise NotImplementedError

    def at(self, endpoint: str) -> Any:
        """A client of ``endpoint`` alone (one of :attr:`endpoints`), with this
        client's settings: to ask one daemon of several for its ``status``, or
        to ``restart`` its Ollama. Made once, closed with this client; a client
        of one endpoint returns itself."""
        if endpoint not in self.endpoints:
            raise ValueError(f"{endpoint!r} is not one of this client's endpoints "
                             f"({self.endpoint})")
        if len(self.endpoints) == 1:
            return self
        if endpoint in self._at:
            return self._at[endpoint]
        if self._closed:
            raise client_closed(self.endpoint)
        made = type(self)(endpoint, model=self.model,
                          timeout=self.timeout if self._timeout_given else None,
                          connect_timeout=self.connect_timeout,
                          max_message_bytes=self.max_message_bytes, app=self.app,
                          server_key=self._key_sources[0], client_key=self._key_sources[1])
        return self._at.setdefault(endpoint, made)  # two threads may race: one wins

    def _close(self) -> None:
        """Refuse further calls and close every channel (see the subclasses' ``close``)."""
        self._closed = True
        self._channels.close_all()
        for client in list(self._at.values()):
            client.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {self.endpoint}{state}>"

    # -- building calls -----------------------------------------------------

    def _call(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None,
              *, stream: bool = False, shape: Callable[[dict[str, Any]], Any] = dict) -> Call:
        seconds = self.timeout if timeout is None else check_timeout(timeout)
        args = dict(args or {})
        # A deadline nobody chose is left to the daemon: the profile's, or its
        # default, within the user's tenants.max_timeout.
        given = timeout is not None or self._timeout_given
        return Call(op, args, seconds, stream, shape, timeout_given=given)

    def _generation_call(self, op: str, key: str, value: Any, generation: Mapping[str, Any],
                         timeout: float | None, stream: bool = False) -> Call:
        allowed = _CHAT_KEYS if op == "chat" else _GENERATION_KEYS
        return self._call(op, {key: value, **self._generation_args(generation, allowed)},
                          timeout, stream=stream)

    def _generation_args(self, generation: Mapping[str, Any],
                         allowed: frozenset[str] = _GENERATION_KEYS) -> dict[str, Any]:
        unknown = generation.keys() - allowed
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        args = {key: value for key, value in generation.items() if value is not None}
        if self.model and "model" not in args:
            args["model"] = self.model
        return args

    def _batch_call(self, prompts: Sequence[str], generation: Mapping[str, Any],
                    timeout: float | None) -> Call:
        """One call for every prompt; :func:`split_batch` cuts it to the daemon's size."""
        if isinstance(prompts, str):
            raise TypeError("batch() takes a list of prompts, not one string")
        prompts = list(prompts)
        return self._call("batch", {"prompts": prompts, **self._generation_args(generation)},
                          timeout, shape=_batch_shape(prompts))

    def _embed_call(self, input: str | Sequence[str], model: str | None,
                    timeout: float | None, priority: str | None = None,
                    profile: str | None = None) -> Call:
        args: dict[str, Any] = {"input": input if isinstance(input, str) else list(input)}
        if model or self.model:
            args["model"] = model or self.model
        for key, value in (("priority", priority), ("profile", profile)):
            if value is not None:
                args[key] = value
        return self._call("embed", args, timeout, shape=_embeddings)

    def _pull_call(self, model: str, insecure: bool, timeout: float | None) -> Call:
        """A ``pull``: ``timeout`` bounds the wait for each progress line; without one the
        daemon's ``ollama.pull_stall_timeout`` applies (this client's default is for
        generation, not for pulls) and the client waits up to the protocol's longest."""
        self._one_daemon("pull", "the model onto")
        args = {"model": model, "insecure": bool(insecure)}
        if timeout is None:
            return Call("pull", args, protocol.MAX_TIMEOUT, stream=True, timeout_given=False,
                        per_chunk=True)
        return Call("pull", args, check_timeout(timeout), stream=True, per_chunk=True)

    def _restart_call(self, reason: str | None, timeout: float | None) -> Call:
        self._one_daemon("restart", "Ollama of")
        return self._call("restart", {"reason": reason} if reason else {}, timeout)

    def _one_daemon(self, op: str, what: str) -> None:
        """Admin ops act on one host: the one the balancing picks would surprise everyone."""
        if len(self.endpoints) > 1:
            raise ValueError(f"{op}() on a client of several endpoints: say which daemon "
                             f"({what} which host), client.at(ENDPOINT).{op}(...)")

    # -- encoding and errors ------------------------------------------------

    def _encode(self, call: Call) -> Outgoing:
        """Encode ``call``, refusing what must not be sent (closed client, too large)."""
        if self._closed:
            raise client_closed(self.endpoint)
        request_id = new_request_id()
        request = protocol.Request(request_id, call.op, call.args, call.timeout, call.stream,
                                   app=self.app, timeout_given=call.timeout_given)
        try:
            frame = protocol.encode_request(request)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{call.op} arguments are not JSON-serialisable: {exc}") from None
        if len(frame) > self.max_message_bytes:
            # libzmq would disconnect us without a word: refuse before the socket sees it.
            raise TooLarge(f"request is {len(frame)} bytes; the limit is "
                           f"{self.max_message_bytes} (max_message_bytes)")
        # With a profile and no deadline chosen, the profile's applies, which
        # only the daemon knows: it answers by then, at the latest by MAX_TIMEOUT.
        waits = protocol.MAX_TIMEOUT if not call.timeout_given and call.args.get("profile") \
            else call.timeout
        return Outgoing(call, request_id, frame, time.monotonic() + waits + REPLY_GRACE)
