"""`ollamad stand-in`: start-up, signals and shutdown, in the order `ollama serve` has them.

1. Bind the port (taken: `Error: listen tcp ...: bind: address already in use`, exit 1).
2. Log `Listening on HOST:PORT (version 0.33.0)` with the real port; a
   wildcard host (`0.0.0.0`, `::` or none) listens dual-stack and logs
   `[::]:PORT`, as Go does; `[::1]:PORT` for IPv6 loopback.
3. Pretend GPU discovery for the start-up delay: TCP connects succeed, HTTP
   is not answered yet.
4. Serve. SIGTERM/SIGINT (the first one; later ones are ignored) closes the
   listener, cutting streams short, SIGKILLs the runners and exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from ollamad.testing.standin import config, log
from ollamad.testing.standin.api import App
from ollamad.testing.standin.config import GIB
from ollamad.testing.standin.httpserver import make_server
from ollamad.testing.standin.memory import default_num_ctx


_WILDCARDS = ("", "0.0.0.0", "::")


class _ShutdownRequested(BaseException):
    """Raised in the main thread by the first SIGTERM/SIGINT."""


class _BindError(Exception):
    pass


def _go_address(family: int, host: str, port: int) -> str:
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def _listen(settings: config.Settings) -> socket.socket:
    """A listening socket where Ollama would listen, or _BindError with Go's text."""
    if settings.host in _WILDCARDS:  # every interface, IPv6 and IPv4, as Go listens
        candidates = [(socket.AF_INET6, ("::", settings.port)),
                      (socket.AF_INET, ("0.0.0.0", settings.port))]
        shown = f"[{settings.host}]:{settings.port}" if settings.host == "::" \
            else f"{settings.host}:{settings.port}"  # Go names the address as it was given
    else:
        try:
            infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise _BindError(f"listen tcp: lookup {settings.host}: no such host") from None
        infos.sort(key=lambda info: info[0] != socket.AF_INET)  # Go prefers IPv4
        candidates = [(info[0], info[4][:2]) for info in infos]
        shown = _go_address(candidates[0][0], *candidates[0][1])
    error: OSError | None = None
    for family, address in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go does
            if family == socket.AF_INET6 and settings.host in _WILDCARDS:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            sock.listen(4096)
            return sock
        except OSError as exc:
            sock.close()
            error = error or exc
    reason = (error.strerror or str(error)) if error else "no address"
    raise _BindError(f"listen tcp {shown}: bind: {reason[:1].lower()}{reason[1:]}")


def _log_startup(settings: config.Settings, listener: socket.socket):
    family = listener.family
    host, port = listener.getsockname()[:2]
    log.info("routes.go:1259", "server config", env=(
        f"map[OLLAMA_HOST:{settings.host_url} OLLAMA_KEEP_ALIVE:{settings.keep_alive_ns}ns "
        f"OLLAMA_MAX_LOADED_MODELS:{settings.max_loaded_models} "
        f"OLLAMA_CONTEXT_LENGTH:{settings.context_length} "
        f"OLLAMA_MAX_QUEUE:{settings.max_queue} OLLAMA_NUM_PARALLEL:{settings.num_parallel}]"))
    log.info("standin", "ollamad stand-in: pretending to be ollama serve",
             models=",".join(settings.models), token_delay=settings.token_delay,
             load_time=settings.load_time, startup_delay=settings.startup_delay)
    log.info("images.go:757", f"total blobs: {3 * len(settings.models)}")
    log.info("routes.go:1310",
             f"Listening on {_go_address(family, host, port)} (version {config.VERSION})")
    log.info("gpu.go:226", "looking for compatible GPUs")


class _Server:
    def __init__(self, settings: config.Settings, listener: socket.socket):
        self._settings = settings
        self._listener = listener
        self._app: App | None = None
        self._http = None

    def run(self):
        settings = self._settings
        _log_startup(settings, self._listener)
        for fault in settings.faults:
            if fault.kind == "exit":  # a server that dies right after binding
                log.event("ERROR", "standin", "exit fault", code=fault.params["code"])
                os._exit(fault.params["code"])
        delay = next((f.params["seconds"] for f in settings.faults if f.kind == "slow_start"),
                     settings.startup_delay)
        self._app = App(settings)
        if delay:
            time.sleep(delay)
        if settings.vram:
            log.info("types.go:131", "inference compute", id="GPU-standin", library="cuda",
                     variant="v12", compute="8.9", driver="12.4", name="Stand-in GPU",
                     total=f"{settings.vram / GIB:.1f} GiB", available=f"{settings.vram / GIB:.1f} GiB")
        else:
            log.info("types.go:131", "inference compute", id="cpu", library="cpu")
        log.info("routes.go:2058", "vram-based default context",
                 total_vram=f"{settings.vram / GIB:.1f} GiB",
                 default_num_ctx=default_num_ctx(settings.vram))
        self._http = make_server(self._listener, self._app)
        self._http.serve_forever(poll_interval=0.5)

    def shutdown(self) -> int:
        self._listener.close()
        if self._http is not None:
            self._http.cut_connections()
        if self._app is not None:
            self._app.pool.kill_all(timeout=2.0)
        return 0


def _on_signal(signum: int, frame):
    # Only the first signal counts.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _ShutdownRequested()


def main(argv: list[str]) -> int:
    settings = config.load(argv, os.environ)
    try:
        listener = _listen(settings)
    except _BindError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    server = _Server(settings, listener)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        server.run()
    except _ShutdownRequested:
        pass
    code = server.shutdown()
    sys.stderr.flush()
    # Daemon threads are mid-request: leave at once, as a Go program does.
    os._exit(code)
