"""The daemon: wiring, the I/O loop, shutdown and reload.

The I/O thread (the main thread) owns the ROUTER socket. Each turn of its
loop it reads what arrived, admits or refuses it, sends the replies other
threads queued, answers requests whose deadline passed, handles signals
(TERM/INT: shut down, HUP: reload) and pings the systemd watchdog — only
from here, so a wedged loop lets systemd restart the service.
"""

from __future__ import annotations

import grp
import heapq
import itertools
import logging
import os
import signal
import time
from typing import Any, Mapping

import zmq

from ollamad import __version__, config as config_mod
from ollamad.args import GenerationDefaults
from ollamad.backend import OllamaBackend
from ollamad.config import Config
from ollamad.exchange import BatchExchange, Exchange
from ollamad.gpu import GpuMonitor, VramLeakPolicy, cpu_fallback, memory_pressure, models_vram_bytes
from ollamad.logsetup import set_level
from ollamad.metrics import Metrics
from ollamad.notify import Notifier, format_status
from ollamad.ops import Dispatcher
from ollamad.pool import ProgressTracker, WorkerPool
from ollamad.retry import OllamaFailure, RetryPolicy
from ollamad.server import Incoming, Outbox, Peer, RouterSocket
from ollamad.supervisor import Supervisor, SupervisorError
from ollamad_client import protocol
from ollamad_client.protocol import Error, ErrorCode, ProtocolError

log = logging.getLogger("ollamad")

#: Messages read per loop turn before replies get their turn.
RECEIVE_BATCH = 256
#: Longest the loop sleeps in poll (it also wakes for replies and signals).
MAX_POLL_SECONDS = 0.5
#: Keys whose change needs a daemon restart (the rest apply on reload).
RESTART_KEYS = ("socket", "socket_mode", "workers", "queue_size", "max_message_bytes")


class Daemon:
    def __init__(self, config: Config, *, reload_config=None, notifier: Notifier | None = None):
        self.config = config
        self._reload_config = reload_config          # () -> Config, for SIGHUP
        self.notifier = notifier or Notifier.from_environment()
        self.request_metrics = Metrics()
        self.progress = ProgressTracker()
        self.outbox = Outbox()
        self._status_changed = False
        self.supervisor = Supervisor(config, progress=self.progress, on_change=self._on_supervisor_change)
        self.backend = OllamaBackend(self.supervisor, RetryPolicy.from_config(config))
        self.pool = WorkerPool(config.workers, config.queue_size)
        self.gpu_monitor = GpuMonitor(config.gpu.poll_interval, self.supervisor.ollama_pids,
                                      nvml=config.gpu.nvml_module)
        self.leak_policy = VramLeakPolicy(config.gpu.leak_threshold_bytes or None, config.gpu.leak_duration)
        self.dispatcher = Dispatcher(
            pool=self.pool, backend=self.backend, metrics=self.request_metrics, progress=self.progress,
            introspection=self, defaults=self._defaults(config), max_batch=config.max_batch,
            max_message_bytes=config.max_message_bytes)
        self._deadlines: list[tuple[float, int, Exchange]] = []
        self._sequence = itertools.count()
        self._started = time.monotonic()
        self._stopping = False
        self._router: RouterSocket | None = None
        self._context: zmq.Context | None = None
        self._next_policy_check = 0.0

    @staticmethod
    def _defaults(config: Config) -> GenerationDefaults:
        return GenerationDefaults(model=config.model, max_tokens_cap=config.max_tokens_cap)

    # -- lifecycle --------------------------------------------------------

    def bind(self) -> str:
        """Check Ollama's command and bind the socket; errors stop start-up."""
        self.supervisor.check_command()
        self._context = zmq.Context()
        self._router = RouterSocket(self._context, self.config.socket,
                                    self.config.max_message_bytes, self.config.socket_mode)
        return self._router.bound

    def run(self) -> int:
        assert self._router is not None, "bind() first"
        previous = {sig: signal.signal(sig, lambda *_: None)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        previous_fd = signal.set_wakeup_fd(self.outbox.write_fd, warn_on_full_buffer=False)
        try:
            self.pool.start()
            self.supervisor.start()
            self.gpu_monitor.start()
            log.info("ollamad %s serving on %s with %d workers", __version__,
                     self._router.bound, self.pool.size)
            # READY means: the socket is bound and requests are accepted.
            # Ollama may still be starting; requests wait for it within their
            # own deadline (status and health say where it is).
            self.notifier.ready()
            self._emit_status()
            self._loop()
            self._shutdown()
            return 0
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close()

    def _close(self) -> None:
        if self._router is not None:
            self._router.close()
        if self._context is not None:
            self._context.term()
        self.outbox.close()
        self.notifier.close()

    # -- the loop ---------------------------------------------------------

    def _loop(self) -> None:
        assert self._router is not None
        poller = zmq.Poller()
        poller.register(self._router.socket, zmq.POLLIN)
        poller.register(self.outbox.read_fd, zmq.POLLIN)
        while not self._stopping:
            events = dict(poller.poll(self._poll_timeout_ms()))
            if self.outbox.read_fd in events:
                for signum in self.outbox.take_signals():
                    self._on_signal(signum)
            if self._router.socket in events:
                self._receive()
            self._tick()

    def _tick(self) -> None:
        """The work of every loop turn after reading: replies, deadlines, housekeeping."""
        self._flush_outbox()
        self._expire_deadlines()
        now = time.monotonic()
        self.notifier.maybe_ping(now)
        if self._status_changed:
            self._status_changed = False
            self._emit_status()
        if now >= self._next_policy_check:
            self._next_policy_check = now + self.config.gpu.poll_interval
            self._check_vram_leak()

    def _poll_timeout_ms(self) -> int:
        timeout = MAX_POLL_SECONDS
        if self._deadlines:
            timeout = min(timeout, max(0.0, self._deadlines[0][0] - time.monotonic()))
        if self.notifier.watchdog_interval:
            timeout = min(timeout, self.notifier.watchdog_interval / 2)
        return max(1, int(timeout * 1000))

    def _receive(self) -> None:
        assert self._router is not None
        for _ in range(RECEIVE_BATCH):
            incoming = self._router.receive()
            if incoming is None:
                return
            self._admit(incoming)

    def _admit(self, incoming: Incoming) -> None:
        if incoming.body is None:
            self.request_metrics.count_dropped()
            return
        try:
            request = protocol.decode_request(incoming.body)
        except ProtocolError as exc:
            if exc.request_id is None:
                self.request_metrics.count_dropped()
                log.debug("dropped a malformed message: %s", exc)
                return
            self._send(incoming.route, protocol.encode_error(exc.request_id, Error.of(exc.code, str(exc))))
            self.request_metrics.record("invalid", 0.0, error=Error.of(exc.code, str(exc)))
            return
        if request.op == "batch":
            prompts = request.args.get("prompts")
            size = len(prompts) if isinstance(prompts, list) else 0
            exchange: Exchange = BatchExchange(request, incoming.route, self.outbox.put,
                                               self.request_metrics, size)
        else:
            exchange = Exchange(request, incoming.route, self.outbox.put, self.request_metrics)
        if self._stopping:
            exchange.reject(Error.of(ErrorCode.SHUTTING_DOWN, "ollamad is shutting down"))
            return
        self.dispatcher.dispatch(exchange, Peer.from_address(incoming.peer_address))
        if not exchange.finished:
            heapq.heappush(self._deadlines, (exchange.deadline, next(self._sequence), exchange))

    def _send(self, route: tuple[bytes, ...], payload: bytes) -> None:
        assert self._router is not None
        if not self._router.send(route, payload):
            self.request_metrics.count_dropped()

    def _flush_outbox(self) -> None:
        for route, payload in self.outbox.pop_all():
            self._send(route, payload)

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, exchange = heapq.heappop(self._deadlines)
            exchange.expire()
        # Finished exchanges wait in the heap until their deadline; under
        # heavy load with long deadlines, sweep them out now and then.
        if len(self._deadlines) > 4096:
            self._deadlines = [entry for entry in self._deadlines if not entry[2].finished]
            heapq.heapify(self._deadlines)
        self._flush_outbox()

    def _open_exchanges(self) -> list[Exchange]:
        return [entry[2] for entry in self._deadlines if not entry[2].finished]

    # -- signals ----------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.info("received %s: shutting down", signal.Signals(signum).name)
            self._stopping = True
        elif signum == signal.SIGHUP:
            self.reload()

    def reload(self) -> None:
        """Re-read the config and apply what can change live; drop no request."""
        if self._reload_config is None:
            return
        self.notifier.reloading()
        try:
            new = self._reload_config()
        except config_mod.ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            self.notifier.ready()
            return
        old = self.config
        needs_restart = [key for key in RESTART_KEYS if getattr(old, key) != getattr(new, key)]
        needs_restart += [f"ollama.{key}" for key in self.supervisor.reconfigure(new)]
        self.backend.policy = RetryPolicy.from_config(new)
        self.dispatcher.defaults = self._defaults(new)
        self.dispatcher.max_batch = new.max_batch
        self.leak_policy = VramLeakPolicy(new.gpu.leak_threshold_bytes or None, new.gpu.leak_duration)
        set_level(new.log_level)
        self.config = new
        if needs_restart:
            log.warning("reloaded; these changes need a daemon restart to apply: %s",
                        ", ".join(needs_restart))
        else:
            log.info("reloaded the configuration")
        self.notifier.ready()
        self._emit_status()

    # -- shutdown ---------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop accepting, answer the queue, let in-flight work finish, stop Ollama."""
        self.notifier.stopping()
        stopping = Error.of(ErrorCode.SHUTTING_DOWN, "ollamad is shutting down")
        for task in self.pool.drain():
            task.expire(stopping)
        grace_end = time.monotonic() + self.config.shutdown_grace
        assert self._router is not None
        poller = zmq.Poller()
        poller.register(self._router.socket, zmq.POLLIN)
        poller.register(self.outbox.read_fd, zmq.POLLIN)
        while self._open_exchanges() and time.monotonic() < grace_end:
            events = dict(poller.poll(50))
            if self.outbox.read_fd in events:
                self.outbox.take_signals()   # a second TERM changes nothing
            if self._router.socket in events:
                self._receive()              # answered shutting_down
            self._tick()
        for exchange in self._open_exchanges():
            exchange.reject(stopping)
        self._flush_outbox()
        self.pool.stop(timeout=2.0)
        self.gpu_monitor.stop(timeout=2.0)
        self.supervisor.stop(timeout=self.config.ollama.stop_grace + 5.0)
        log.info("ollamad stopped")

    # -- status, health, metrics (Introspection) --------------------------

    def _on_supervisor_change(self, snapshot: Mapping[str, Any]) -> None:
        # Called on the supervisor's thread: hand it to the I/O loop.
        # last_reason explains a state other than RUNNING; after a recovery it is stale.
        why = snapshot.get("last_reason") if snapshot.get("state") != "RUNNING" else None
        log.info("ollama %s%s", snapshot.get("state"), f": {why}" if why else "")
        self._status_changed = True
        self.outbox.wake()

    def _emit_status(self) -> None:
        gpu = self.gpu_monitor.summary()
        used = sum(g.get("memory_used") or 0 for g in gpu.get("gpus", [])) or None
        total = sum(g.get("memory_total") or 0 for g in gpu.get("gpus", [])) or None
        self.notifier.status(format_status(self.supervisor.state, self.supervisor.snapshot().get("pid"),
                                           self.pool.size, self.pool.busy(), used, total))

    def status(self) -> dict[str, Any]:
        return {
            "daemon": {"pid": os.getpid(), "version": __version__,
                       "uptime_s": round(time.monotonic() - self._started, 3),
                       "socket": self._router.bound if self._router else self.config.socket,
                       "state": "stopping" if self._stopping else "serving",
                       "workers": self.pool.size, "busy_workers": self.pool.busy(),
                       "queue_depth": self.pool.depth(), "queue_capacity": self.config.queue_size,
                       "model": self.config.model},
            "ollama": self.supervisor.snapshot(),
            "gpu": self.gpu_monitor.summary(),
            "health": self.health(),
        }

    def health(self) -> dict[str, Any]:
        ollama = self.supervisor.snapshot()
        unhealthy, degraded = [], []
        if self._stopping:
            unhealthy.append("ollamad is shutting down")
        if ollama.get("state") != "RUNNING":
            why = ollama.get("fatal_reason") or ollama.get("last_reason")
            unhealthy.append(f"Ollama is {ollama.get('state')}" + (f": {why}" if why else ""))
        gpu = self.gpu_monitor.snapshot()
        degraded += memory_pressure(gpu, self.config.gpu.memory_pressure)
        degraded += cpu_fallback(gpu, ollama.get("models") or [])
        status = "unhealthy" if unhealthy else "degraded" if degraded else "healthy"
        return {"healthy": status == "healthy", "status": status, "reasons": unhealthy + degraded,
                "ollama": {"state": ollama.get("state"), "pid": ollama.get("pid"),
                           "url": ollama.get("url"), "restarts": ollama.get("restarts")},
                "gpu": self.gpu_monitor.summary()}

    def metrics(self) -> dict[str, Any]:
        in_flight, _ = self.progress()
        return self.request_metrics.snapshot(queue_depth=self.pool.depth(), in_flight=self.pool.busy(),
                                     generations_in_flight=in_flight,
                                     ollama_restarts=self.supervisor.snapshot().get("restarts", 0),
                                     gpu=self.gpu_monitor.metrics())

    def gpu(self) -> dict[str, Any]:
        return self.gpu_monitor.snapshot()

    def restart_ollama(self, reason: str) -> dict[str, Any]:
        try:
            self.supervisor.request_restart(reason)
        except SupervisorError as exc:  # external mode without a restart command
            raise OllamaFailure(ErrorCode.UNAVAILABLE, str(exc), retryable=False) from None
        return {"restarted": True, "reason": reason}

    def is_admin(self, peer: Peer) -> bool:
        if peer.uid is None:
            return False  # tcp carries no credentials
        if peer.uid in (0, os.getuid()):
            return True
        if not self.config.admin_group:
            return False
        try:
            gid = grp.getgrnam(self.config.admin_group).gr_gid
        except KeyError:
            return False
        return gid == peer.gid or gid in _supplementary_groups(peer.pid)

    # -- policies ---------------------------------------------------------

    def _check_vram_leak(self) -> None:
        if not self.leak_policy.enabled or self.config.ollama.mode != "spawn":
            return
        snapshot = self.supervisor.snapshot()
        if snapshot.get("state") != "RUNNING":
            return
        gpu = self.gpu_monitor.snapshot()
        busy = self.pool.busy() + self.pool.depth()
        reason = self.leak_policy.observe(gpu.get("ollama_vram_bytes"),
                                          models_vram_bytes(snapshot.get("models") or []), busy)
        if reason:
            log.warning("VRAM leak policy: %s", reason)
            self.supervisor.request_restart(reason)


def _supplementary_groups(pid: int | None) -> set[int]:
    if pid is None:
        return set()
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()
