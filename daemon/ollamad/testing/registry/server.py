"""The registry's HTTP side: the v2 paths Ollama pulls from, and a request log.

    GET|HEAD /v2/                                   200 {}
    GET|HEAD /v2/NAMESPACE/MODEL/manifests/TAG      the manifest, or 404 MANIFEST_UNKNOWN
    GET|HEAD /v2/NAMESPACE/MODEL/blobs/DIGEST       the blob (Range: bytes=A-B gives 206),
                                                    or 404 BLOB_UNKNOWN
    GET      /_registry/log                         {"requests": [entry, ...]}

An entry is ``{"method", "path", "status", "sent", "total", "state"}`` with
``state`` ``sending`` while a body goes out, then ``done``, or ``cut`` when
the client left before its end. Each finished request is also one line on
standard output. Blob bodies go out at ``rate`` bytes per second (0: at
once), in twentieths of a second, so a client that leaves is noticed within
two of them.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ollamad.testing.registry.content import MANIFEST_TYPE, Blob, ServedModel

_PATH = re.compile(r"/v2/(?P<repository>[^/]+/[^/]+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
#: Writes per second of a throttled body.
PACE = 20


class RequestLog:
    """What the registry was asked, and how far each answer got. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []

    def begin(self, method: str, path: str, status: int, total: int) -> dict[str, Any]:
        entry = {"method": method, "path": path, "status": status, "sent": 0, "total": total,
                 "state": "sending"}
        with self._lock:
            self._entries.append(entry)
        return entry

    def update(self, entry: dict[str, Any], **changes: Any) -> None:
        with self._lock:
            entry.update(changes)
        if "state" in changes:
            print(f"{entry['method']} {entry['path']} {entry['status']} "
                  f"{entry['sent']}/{entry['total']} bytes {entry['state']}", flush=True)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._entries]


class RegistryServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], models: list[ServedModel], rate: int):
        super().__init__(address, _Handler)
        self.manifests = {(m.repository, m.tag): m.manifest for m in models}
        self.blobs: dict[tuple[str, str], Blob] = {
            (m.repository, blob.digest): blob for m in models for blob in m.blobs}
        self.rate = rate
        self.log = RequestLog()


class _Handler(BaseHTTPRequestHandler):
    server: RegistryServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # RequestLog writes one line per request instead

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        if self.path == "/_registry/log":
            self._send(200, "application/json",
                       json.dumps({"requests": self.server.log.snapshot()}).encode(), log=False)
        else:
            self._answer(head=False)

    def _answer(self, head: bool) -> None:
        if self.path == "/v2/":
            return self._send(200, "application/json", b"{}", head=head)
        found = _PATH.fullmatch(self.path)
        if found is None:
            return self._error(404, "NAME_UNKNOWN", "repository name not known to registry", head)
        repository, ref = found["repository"], found["ref"]
        if found["kind"] == "manifests":
            manifest = self.server.manifests.get((repository, ref))
            if manifest is None:
                return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown", head)
            return self._send(200, MANIFEST_TYPE, manifest, head=head)
        blob = self.server.blobs.get((repository, ref))
        if blob is None:
            return self._error(404, "BLOB_UNKNOWN", "blob unknown to registry", head)
        self._send_blob(blob.data, head)

    def _send_blob(self, data: bytes, head: bool) -> None:
        asked = _RANGE.fullmatch(self.headers.get("Range", ""))
        if asked is None:
            return self._send(200, "application/octet-stream", data, head=head, paced=True)
        start = int(asked[1])
        end = min(int(asked[2]) if asked[2] else len(data) - 1, len(data) - 1)
        extra = {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
        self._send(206, "application/octet-stream", data[start:end + 1], head=head, paced=True,
                   extra=extra)

    def _error(self, status: int, code: str, message: str, head: bool) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        self._send(status, "application/json", body, head=head)

    def _send(self, status: int, content_type: str, body: bytes, *, head: bool = False,
              paced: bool = False, extra: dict[str, str] | None = None, log: bool = True) -> None:
        entry = self.server.log.begin(self.command, self.path, status, len(body)) if log else None
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if not paced:   # a manifest's own digest (a blob's is in its path)
                self.send_header("Docker-Content-Digest", Blob.of("", body).digest)
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self._write(body, entry, self.server.rate if paced else 0)
        except OSError:   # the client left: a reset, a broken pipe
            self.close_connection = True
            if entry is not None:
                self.server.log.update(entry, state="cut")
            return
        if entry is not None:
            self.server.log.update(entry, state="done")

    def _write(self, body: bytes, entry: dict[str, Any] | None, rate: int) -> None:
        piece = max(1024, rate // PACE) if rate else len(body) or 1
        for offset in range(0, len(body), piece):
            chunk = body[offset:offset + piece]
            self.wfile.write(chunk)
            self.wfile.flush()
            if entry is not None:
                self.server.log.update(entry, sent=offset + len(chunk))
            if rate:
                time.sleep(len(chunk) / rate)


def serve(host: str, port: int, models: list[ServedModel], rate: int) -> None:
    """Bind, print ``HOST:PORT`` as the first line of standard output, serve until killed."""
    server = RegistryServer((host, port), models, rate)
    bound_host, bound_port = server.server_address[:2]
    print(f"{bound_host}:{bound_port}", flush=True)
    for model in models:
        print(f"serving {model.repository}:{model.tag} "
              f"({sum(len(b.data) for b in model.blobs)} bytes in {len(model.blobs)} blobs)",
              file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.2)
