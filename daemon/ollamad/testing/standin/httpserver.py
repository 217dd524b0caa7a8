"""HTTP/1.1 plumbing shaped like Go's net/http: one thread per connection, keep-alive.

Answers are written in one `send` each (status line, headers, body), with
TCP_NODELAY on every accepted socket: small request/response pairs would
otherwise wait ~40 ms for Nagle and delayed ACKs. Streams use chunked
transfer encoding, one chunk per NDJSON line or server-sent event, sent as
soon as it is made.
Headers match Go's: `Content-Type`, `Date`, `Content-Length` or
`Transfer-Encoding: chunked`, no `Server`.
"""

from __future__ import annotations

import email.utils
import http
import select
import socket
import socketserver
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from ollamad.testing.standin import gojson, log
from ollamad.testing.standin.apitypes import ClientGone

JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
NDJSON = "application/x-ndjson"
NO_CONTENT_TYPE = ""  # a handler that writes no body: Go sends no Content-Type

_date_cache: tuple[int, str] = (-1, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def _status_line(status: int) -> str:
    try:
        return f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
    except ValueError:
        return f"HTTP/1.1 {status} status code {status}\r\n"  # Go, for codes it cannot name


class Peer:
    """The client at the other end of a connection: is it still there?"""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._pipelined = False  # data waiting means "there" but poll can't tell us more

    def _closed(self) -> bool:
        try:
            data = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if data:
            self._pipelined = True
            return False
        return True

    def gone(self) -> bool:
        return not self._pipelined and bool(self._poller.poll(0)) and self._closed()

    def sleep_until(self, deadline: float):
        """Sleep until time.monotonic() reaches `deadline`; ClientGone if it leaves first."""
        while (remaining := deadline - time.monotonic()) > 0:
            if self._pipelined:
                time.sleep(remaining)
                return
            if self._poller.poll(remaining * 1000) and self._closed():
                raise ClientGone()

    def wait_for(self, condition: Callable[[], bool], poll: float = 0.05):
        while not condition():
            self.sleep_until(time.monotonic() + poll)


class Exchange:
    """One request and the means to answer it, once."""

    def __init__(self, handler: "_Handler", method: str, path: str, body: bytes):
        self._handler = handler
        self.method = method
        self.path = path
        self.body = body
        self.peer: Peer = handler.peer
        self.status: int | None = None  # what was answered, for the log line
        self.after_response: Callable[[], None] | None = None
        self._on_complete: Callable[[], None] | None = None

    def on_complete(self, callback: Callable[[], None]):
        """Run `callback` once, just before the answer's last bytes are sent (or never
        sent): whoever reads the answer finds this request's bookkeeping done."""
        self._on_complete = callback

    def complete(self):
        callback, self._on_complete = self._on_complete, None
        if callback is not None:
            callback()

    @property
    def answered(self) -> bool:
        return self.status is not None

    def _write(self, data: bytes):
        try:
            self._handler.wfile.write(data)
        except OSError:
            raise ClientGone() from None

    def _head(self, status: int, content_type: str, framing: str) -> str:
        self.status = status
        head = _status_line(status)
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Date: {_http_date()}\r\n"
        if self._handler.close_connection:
            head += "Connection: close\r\n"
        return head + framing + "\r\n"

    def send(self, status: int, body: bytes, content_type: str, extra_headers: str = ""):
        head = self._head(status, content_type,
                          f"Content-Length: {len(body)}\r\n{extra_headers}")
        self.complete()
        self._write(head.encode("latin-1") + (b"" if self.method == "HEAD" else body))

    def send_json(self, status: int, value: Any, content_type: str = JSON):
        self.send(status, value if isinstance(value, bytes) else gojson.dumps(value),
                  content_type)

    def send_error(self, status: int, message: str, content_type: str = JSON):
        self.send_json(status, {"error": message}, content_type)

    def stream(self, content_type: str = NDJSON) -> "Stream":
        return Stream(self, content_type)


class Stream:
    """A streamed answer: headers go out with the first chunk, one chunk per line or event."""

    def __init__(self, exchange: Exchange, content_type: str):
        self._exchange = exchange
        self._content_type = content_type
        self._chunked = exchange._handler.request_version == "HTTP/1.1"
        if not self._chunked:
            exchange._handler.close_connection = True  # HTTP/1.0: the end of data ends it

    @property
    def started(self) -> bool:
        return self._exchange.answered

    def write(self, value: Any, last: bool = False):
        """Send one NDJSON line; `last` ends the stream in the same write."""
        self.send(gojson.dumps(value) + b"\n", last)

    def send(self, data: bytes, last: bool = False):
        if self._chunked:
            data = (b"%x\r\n%s\r\n" % (len(data), data) if data else b"") \
                + (b"0\r\n\r\n" if last else b"")
        if not self.started:
            framing = "Transfer-Encoding: chunked\r\n" if self._chunked else ""
            data = self._exchange._head(200, self._content_type, framing).encode("latin-1") + data
        if last:
            self._exchange.complete()
        self._exchange._write(data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 0  # unbuffered: each answer is one write

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = Peer(self.connection)
        self.server.track(self.connection, True)

    def finish(self):
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any):
        pass  # requests are logged as [GIN] lines instead

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length)

    def handle_one_request(self):
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if not self.parse_request():
                return
            started = time.monotonic_ns()
            try:
                body = self._read_body()
            except ValueError:
                self.send_error(400, "bad Content-Length or chunk size")
                return
            path = self.path.partition("?")[0]
            exchange = Exchange(self, self.command, path, body)
            self._serve(exchange)
            log.gin(exchange.status or 500, time.monotonic_ns() - started,
                    self.client_address[0], self.command, path)
            if exchange.after_response is not None:
                exchange.after_response()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _serve(self, exchange: Exchange):
        try:
            self.server.app.dispatch(exchange)
        except ClientGone:
            self.close_connection = True
        except Exception:  # a bug: answer 500 like gin's Recovery, and say why in the log
            log.event("ERROR", "recovery.go:102", "panic recovered",
                      error=traceback.format_exc())
            if exchange.answered:
                self.close_connection = True
            else:
                exchange.send(500, b"", TEXT)


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, listener: socket.socket, app: Any):
        super().__init__(listener.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.app = app
        self._connections_lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    def track(self, connection: socket.socket, open_: bool):
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def cut_connections(self):
        """Close every client connection at once, streams mid-way included (Go's Close)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any):
        # Shutdown closes every connection under its handler thread; an
        # OSError from a torn-down connection is not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


def make_server(listener: socket.socket, app: Any) -> _Server:
    """A server on an already bound, listening socket; `app.dispatch(exchange)` answers."""
    return _Server(listener, app)
