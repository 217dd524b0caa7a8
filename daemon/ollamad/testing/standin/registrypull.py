"""Pulls from the registry a model's name names, over HTTP, as Ollama pulls.

A name with a host of its own (``127.0.0.1:5000/library/tiny:v1``) is
fetched from that host with the registry protocol (server/images.go
PullModel, server/download.go): ``GET /v2/NAMESPACE/MODEL/manifests/TAG``,
then for each layer and the config blob a ``HEAD`` for its size and a
``GET`` of the blob. Statuses and errors are Ollama's, byte for byte where
clients see them:

- ``pulling manifest``; a manifest the registry lacks (404) is ``pull model
  manifest: file does not exist`` (images.go:1025, 404 → os.ErrNotExist at
  images.go:1337-1339), a registry that refuses the connection is ``pull
  model manifest: Get "http://HOST/v2/...": dial tcp HOST: connect:
  connection refused`` (Go's net/http error, wrapped at images.go:1025);
- ``pulling <digest[7:19]>`` with ``digest``, ``total`` and ``completed``
  per blob, every 60 ms while it downloads (download.go:450-461) and once
  more when it is complete; a blob already on disk gets one line, complete
  (download.go:492-498); a blob the registry lacks is ``file does not
  exist``;
- ``verifying sha256 digest`` (a mismatch: ``digest mismatch, file must be
  downloaded again: want ..., got ...``, images.go:1447,1463),
  ``writing manifest``, ``success``.

Without ``insecure`` the registry is spoken to over https (images.go:1371-
1373 switch to http only when insecure); a plain-http registry then answers
``http: server gave HTTP response to HTTPS client``, Go's text.

Every registry call has a time-out: connecting and each wait for an answer
(30 s, Go's dialer's; Ollama itself waits for headers without one), and a
blob that sends nothing for 30 s (download.go:105, ``downloadStallTimeout``)
fails the pull. A client that leaves mid-pull stops it at once: a watcher
cuts the registry connection, and a blob downloaded in part is not kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterator

from ollamad.ollama.names import ModelName
from ollamad.testing.standin.apitypes import ClientGone
from ollamad.testing.standin.catalog import Catalog, Model
from ollamad.testing.standin.httpserver import Peer

#: Seconds to connect, and to wait for an answer's headers.
CALL_TIMEOUT = 30.0
#: A blob that sends nothing for this long fails the pull (download.go:105).
BLOB_STALL = 30.0
#: Seconds between progress lines of a blob that downloads (download.go:450).
PROGRESS_EVERY = 0.06
#: How often the watcher looks whether the client is still there.
WATCH_EVERY = 0.05
READ_SIZE = 64 * 1024
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
FILE_DOES_NOT_EXIST = "file does not exist"

Report = Callable[[dict[str, Any]], None]


class PullFailed(Exception):
    """The pull's error, as Ollama words it."""


class _Departure:
    """Watches the client; when it leaves, shuts the registry connection in use down."""

    def __init__(self, peer: Peer):
        self._peer = peer
        self.connection: http.client.HTTPConnection | None = None
        self.gone = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="standin-pull-watch")

    def __enter__(self) -> "_Departure":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY):
            if self._peer.gone():
                self.gone.set()
                sock = getattr(self.connection, "sock", None)
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return

    def check(self) -> None:
        if self.gone.is_set():
            raise ClientGone()


class Progress:
    """Pulls under way, for ``/_standin/state``: name -> the blob being fetched."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pulls: dict[str, dict[str, Any]] = {}

    def set(self, name: str, **state: Any) -> None:
        with self._lock:
            self._pulls[name] = state

    def done(self, name: str) -> None:
        with self._lock:
            self._pulls.pop(name, None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: dict(state) for name, state in self._pulls.items()}


class RegistryPuller:
    def __init__(self, catalog: Catalog):
        self._catalog = catalog
        self.progress = Progress()
        self._lock = threading.Lock()
        #: Blobs "on disk": digest -> size. A later pull of the same blob is a cache hit.
        self._blobs: dict[str, int] = {}

    def pull(self, name: ModelName, insecure: bool, peer: Peer, report: Report) -> None:
        """Fetch ``name`` and install it; PullFailed with Ollama's text, ClientGone."""
        shown = name.shortest
        try:
            with _Departure(peer) as departure:
                _Pull(self, name, "http" if insecure else "https", departure, report).run()
        finally:
            self.progress.done(shown)

    def has_blob(self, digest: str) -> int | None:
        with self._lock:
            return self._blobs.get(digest)

    def keep_blob(self, digest: str, size: int) -> None:
        with self._lock:
            self._blobs[digest] = size

    def install(self, name: ModelName, size: int) -> None:
        self._catalog.install(replace(Model.named(name.shortest), size=size))


class _Pull:
    """One pull: the manifest, each blob, then the model is installed."""

    def __init__(self, puller: RegistryPuller, name: ModelName, scheme: str,
                 departure: _Departure, report: Report):
        self._puller = puller
        self._name = name
        self._scheme = scheme
        self._departure = departure
        self._report = report

    def run(self) -> None:
        self._report({"status": "pulling manifest"})
        try:
            manifest = json.loads(self._fetch("GET", f"manifests/{self._name.tag}"))
            layers = list(manifest.get("layers") or [])
            if (manifest.get("config") or {}).get("digest"):
                layers.append(manifest["config"])
            sizes = sum(int(layer.get("size") or 0) for layer in layers)
        except PullFailed as failure:
            raise PullFailed(f"pull model manifest: {failure}") from None
        except (ValueError, AttributeError, TypeError) as exc:
            raise PullFailed(f"pull model manifest: {exc}") from None
        for layer in layers:
            self._blob(str(layer.get("digest") or ""))
        # Each blob was checked against its digest as it streamed in (a mismatch fails there).
        self._report({"status": "verifying sha256 digest"})
        self._report({"status": "writing manifest"})
        self._puller.install(self._name, sizes)
        self._report({"status": "success"})

    # -- one blob ----------------------------------------------------------------
    def _blob(self, digest: str) -> None:
        """Download one blob, unless it is on disk already."""
        if not digest:
            raise PullFailed(f"{self._name.repository}: digest is empty")
        status = f"pulling {digest[7:19]}"
        cached = self._puller.has_blob(digest)
        if cached is not None:
            self._report({"status": status, "digest": digest, "total": cached,
                          "completed": cached})
            return
        with self._open("HEAD", f"blobs/{digest}") as head:
            total = int(head.getheader("Content-Length") or 0)
        hasher, completed, reported = hashlib.sha256(), 0, 0.0
        with self._open("GET", f"blobs/{digest}", stall=BLOB_STALL) as response:
            while True:
                try:
                    piece = response.read1(READ_SIZE)
                except (OSError, http.client.HTTPException) as exc:
                    self._departure.check()
                    reason = "part stalled" if isinstance(exc, TimeoutError) else "unexpected EOF"
                    raise PullFailed(f"max retries exceeded: {reason}") from None
                self._departure.check()
                if not piece:
                    break
                hasher.update(piece)
                completed += len(piece)
                self._puller.progress.set(self._name.shortest, digest=digest, total=total,
                                          completed=completed)
                if time.monotonic() - reported >= PROGRESS_EVERY:
                    reported = time.monotonic()
                    self._report({"status": status, "digest": digest, "total": total,
                                  "completed": completed})
        if completed < total:
            raise PullFailed("max retries exceeded: unexpected EOF")
        got = "sha256:" + hasher.hexdigest()
        if got != digest:
            raise PullFailed(f"digest mismatch, file must be downloaded again: want {digest}, "
                             f"got {got}")
        self._report({"status": status, "digest": digest, "total": total, "completed": total})
        self._puller.keep_blob(digest, total)

    # -- HTTP as Go's client reports it --------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self._scheme}://{self._name.host}/v2/{self._name.repository}/{path}"

    def _fetch(self, method: str, path: str) -> bytes:
        with self._open(method, path) as response:
            try:
                return response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._departure.check()
                raise PullFailed(f"{method.title()} \"{self._url(path)}\": {exc}") from None

    @contextlib.contextmanager
    def _open(self, method: str, path: str,
              stall: float = CALL_TIMEOUT) -> Iterator[http.client.HTTPResponse]:
        """The registry's answer (status < 400), its connection closed after; PullFailed in
        Go's words otherwise."""
        host, _, port = self._name.host.rpartition(":")
        if not port.isdigit():
            host, port = self._name.host, ""
        port_number = int(port or (80 if self._scheme == "http" else 443))
        url = self._url(path)
        if self._scheme == "http":
            connection = http.client.HTTPConnection(host, port_number, timeout=CALL_TIMEOUT)
        else:
            connection = http.client.HTTPSConnection(host, port_number, timeout=CALL_TIMEOUT,
                                                     context=ssl.create_default_context())
        self._departure.connection = connection
        with contextlib.closing(connection):
            try:
                connection.connect()
            except ssl.SSLError as exc:
                raise PullFailed(f"{method.title()} \"{url}\": {_tls_text(exc)}") from None
            except OSError as exc:
                self._departure.check()
                raise PullFailed(f"{method.title()} \"{url}\": dial tcp {host}:{port_number}: "
                                 f"{_dial_text(exc)}") from None
            try:
                connection.request(method, f"/v2/{self._name.repository}/{path}",
                                   headers={"Accept": MANIFEST_TYPE})
                response = connection.getresponse()
                connection.sock.settimeout(stall)
            except (OSError, http.client.HTTPException) as exc:
                self._departure.check()
                raise PullFailed(f"{method.title()} \"{url}\": {exc}") from None
            if response.status == 404:   # images.go:1337-1339: os.ErrNotExist
                raise PullFailed(FILE_DOES_NOT_EXIST)
            if response.status >= 400:
                body = response.read(64 * 1024).decode("utf-8", "replace")
                raise PullFailed(f"{response.status}: {body}")
            with contextlib.closing(response):
                yield response


def _dial_text(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connect: connection refused"
    if isinstance(exc, TimeoutError):
        return "i/o timeout"
    return f"connect: {(exc.strerror or str(exc)).lower()}"


def _tls_text(exc: ssl.SSLError) -> str:
    # A plain-http server answers the TLS hello with an HTTP status line: Go sees "HTTP/"
    # where a TLS record should be and says so (net/http's transport).
    if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"):
        return "http: server gave HTTP response to HTTPS client"
    return f"tls: {exc.reason or exc}"
