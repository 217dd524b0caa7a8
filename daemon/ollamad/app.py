"""The daemon: wiring, the start and every way to stop, reload.

:class:`Daemon` builds the parts (supervisor, backend, pool, GPU monitor,
the I/O loop and its ROUTER socket), runs the loop on the main thread, and
on *every* way out, a signal, a dead thread or a bug that escaped, stops
Ollama's whole tree before it returns. A daemon thread that dies ends the
process with :data:`EX_SOFTWARE` (systemd restarts it), and the watchdog is
pinged only while every thread lives.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import signal
import time
import urllib.parse
from typing import Any

import zmq

from ollamad import __version__, config as config_mod, curvekeys, requestlog
from ollamad.args import GenerationDefaults, Limits
from ollamad.backend import OllamaBackend
from ollamad.config import Config
from ollamad.configspec import Applies
from ollamad.gpu import GpuMonitor, VramLeakPolicy, models_vram_bytes
from ollamad.logsetup import set_level
from ollamad.metrics import Metrics
from ollamad.notify import Notifier, format_status
from ollamad.ollama import names
from ollamad.scheduling import (ProgressTracker, WorkerPool, admission_from_config, lane_policy,
                                limit_book)
from ollamad.ollama.loads import Loads
from ollamad.ollama.pulls import PullPolicy, Pulls
from ollamad.retry import OllamaFailure, RetryPolicy
from ollamad.serving import activation, admin
from ollamad.serving.introspection import Introspection
from ollamad.serving.loop import IOLoop
from ollamad.serving.ops import Dispatcher
from ollamad.serving.outbox import Outbox
from ollamad.serving.registry import OpenRequests
from ollamad.prometheus import Collector, MetricsListener
from ollamad.serving.router import BindError, Peer, RouterSocket, ipc_path, socket_group_id
from ollamad.serving.security import EndpointSecurity
from ollamad.supervisor import Supervisor, SupervisorError
from ollamad_client.protocol import Error, ErrorCode

log = logging.getLogger("ollamad")

#: Exit status when a thread of the daemon died (sysexits' EX_SOFTWARE).
EX_SOFTWARE = 70
#: Descriptors kept in hand beyond client connections (Ollama's HTTP
#: connections, pipes, the GPU library, log files), at least.
MIN_SPARE_FILES = 256


#: Allocations from this size on get pages of their own, returned on free.
MMAP_THRESHOLD = 1024 * 1024
#: mallopt()'s parameter for that threshold (malloc.h).
M_MMAP_THRESHOLD = -3


def return_large_buffers_to_the_system() -> bool:
    """Fix glibc's mmap threshold, so that freed request buffers leave the process.

    glibc raises the threshold to the size of each large block it frees (up
    to 32 MiB), so after the first multi-megabyte request the next ones come
    from the heap and their freed memory stays in the process: measured with
    bench/hostile.py, RSS grew 140 MiB per 600 answered 3.5 MB requests, and
    with a fixed threshold it levels off. A no-op where glibc is absent.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_limit(configured: int, file_limit: int) -> int:
    """``max_connections``, lowered to leave spare descriptors (libzmq aborts on EMFILE)."""
    spare = max(MIN_SPARE_FILES, file_limit // 8)
    return max(1, min(configured, file_limit - spare))


class Daemon:
    def __init__(self, config: Config, *, reload_config=None, notifier: Notifier | None = None):
        self.config = config
        self._reload_config = reload_config          # () -> Config, for SIGHUP
        self.notifier = notifier or Notifier.from_environment()
        self.request_metrics = Metrics(config.metrics.max_tenant_labels)
        requestlog.configure(config.metrics.request_log)
        self.metrics_listener: MetricsListener | None = None
        self.progress = ProgressTracker()
        self.outbox = Outbox()
        self._status_changed = False
        self.supervisor = Supervisor(config, progress=self.progress,
                                     loading=lambda model: self.loads.loading(model),
                                     on_change=self._on_supervisor_change)
        self.loads = Loads(lambda: self.supervisor.url, lambda: self.supervisor.run_id,
                           config.ollama.load_timeout)
        self.backend = OllamaBackend(self.supervisor, RetryPolicy.from_config(config), self.loads)
        self.pulls = Pulls(self.supervisor, PullPolicy.from_config(config))
        self.pool = WorkerPool(config.workers, config.queue_size, policy=lane_policy(config),
                               limits=limit_book(config))
        self.gpu_monitor = GpuMonitor(config.gpu.poll_interval, self.supervisor.ollama_pids,
                                      nvml=config.gpu.nvml_module)
        self.leak_policy = VramLeakPolicy(config.gpu.leak_threshold_bytes or None, config.gpu.leak_duration)
        self.requests = OpenRequests(config.max_connections)
        self.dispatcher = Dispatcher(
            pool=self.pool, backend=self.backend, metrics=self.request_metrics, progress=self.progress,
            introspection=self, defaults=GenerationDefaults.from_config(config), limits=Limits.from_config(config),
            requests=self.requests, admission=admission_from_config(config, self._loaded_models),
            pulls=self.pulls)
        self.report = Introspection(
            config=lambda: self.config, supervisor=self.supervisor, pool=self.pool,
            gpu_monitor=self.gpu_monitor, metrics=self.request_metrics, progress=self.progress,
            requests=self.requests, bound=lambda: self._router.bound if self._router else config.socket,
            stopping=lambda: self._stopping, queued_bytes=lambda: self.dispatcher.queued_bytes,
            backlog=lambda: self._loop.delivery.backlog_size() if self._loop else 0,
            loads=lambda: self.loads.snapshot(), pulls=lambda: self.pulls.snapshot())
        self._stopping = False
        self._router: RouterSocket | None = None
        self._security: EndpointSecurity | None = None
        self._context: zmq.Context | None = None
        self._loop: IOLoop | None = None
        self._next_policy_check = 0.0

    # -- lifecycle --------------------------------------------------------

    def bind(self) -> str:
        """Check Ollama's command and bind the socket; errors stop start-up."""
        self.supervisor.check_command()
        return_large_buffers_to_the_system()
        files = raise_file_limit()
        self.requests.max_connections = connection_limit(self.config.max_connections, files)
        if self.requests.max_connections < self.config.max_connections:
            log.warning("max_connections lowered to %d: the open-file limit is %d (raise "
                        "LimitNOFILE=)", self.requests.max_connections, files)
        socket_gid = socket_group_id(self.config.socket_group) if ipc_path(self.config.socket) \
            else None
        # A ConfigError for unsafe tcp or bad key files; its ZAP handler is bound
        # before the ROUTER, which must never be without one.
        self._context = zmq.Context()
        self._security = EndpointSecurity.start(self._context, self.config,
                                                self.request_metrics)
        self._router = RouterSocket(self._context, self.config.socket,
                                    self.config.max_message_bytes, self.config.socket_mode,
                                    socket_gid=socket_gid,
                                    listener_fd=self._passed_listener(self.config.socket),
                                    curve_secret_key=self._security.curve_secret_key,
                                    on_handshake_failure=self._security.handshake_failed)
        self._loop = IOLoop(self._router, self.dispatcher, self.request_metrics, self.requests,
                            self.outbox, self.notifier, on_signal=self._on_signal,
                            housekeeping=self._housekeeping, threads_alive=self.threads_alive)
        self._bind_metrics()
        return self._router.bound

    @staticmethod
    def _passed_listener(endpoint: str) -> int | None:
        """The listening socket systemd passed for `endpoint` (``ollamad.socket``), if any."""
        passed = activation.passed_descriptors(os.environ, os.getpid())
        fd = activation.listener_for(endpoint, passed)
        if fd is not None:
            log.info("serving %s on the listening socket systemd passed (fd %d)", endpoint, fd)
        elif passed:
            log.warning("systemd passed %d socket(s), none listening at %s: binding it here "
                        "(check ListenStream= in ollamad.socket)", len(passed), endpoint)
        return fd

    def _bind_metrics(self) -> None:
        """The Prometheus listener, when ``metrics.listen`` asks for one (never Ollama's port)."""
        where = config_mod.listen_address(self.config)
        if where is None:
            return
        ollama_port = urllib.parse.urlsplit(self.config.ollama.url).port
        if where[1] and where[1] == ollama_port:
            raise BindError(f"metrics.listen {self.config.metrics.listen} is Ollama's port "
                            f"(ollama.url {self.config.ollama.url}): choose another")
        # Only what other threads may read: the listener runs on a thread of its own.
        collector = Collector(metrics=self.report.metrics, series=self.request_metrics.series,
                              ollama=self.supervisor.snapshot, gpu=self.gpu_monitor.snapshot)
        try:
            self.metrics_listener = MetricsListener(where[0], where[1], collector)
        except OSError as exc:
            raise BindError(f"cannot listen for metrics on {self.config.metrics.listen}: "
                            f"{exc.strerror}") from None

    def run(self) -> int:
        assert self._loop is not None and self._router is not None, "bind() first"
        previous = {sig: signal.signal(sig, lambda *_: None)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        previous_fd = signal.set_wakeup_fd(self._loop.signals.write_fd, warn_on_full_buffer=False)
        status = 0
        try:
            self.pool.start()
            self.supervisor.start()
            self.gpu_monitor.start()
            if self.metrics_listener is not None:
                self.metrics_listener.start()
                log.info("Prometheus metrics on http://%s/metrics", self.metrics_listener.address)
            log.info("ollamad %s serving on %s with %d workers", __version__,
                     self._router.bound, self.pool.size)
            # READY means: the socket is bound and requests are accepted.
            # Ollama may still be starting; requests wait for it within their
            # own deadline (status and health say where it is).
            self.notifier.ready()
            self._emit_status()
            self._loop.run_until(lambda: self._stopping or not self.threads_alive())
            if not self.threads_alive():
                log.critical("a thread of the daemon died (%s): stopping, so that it is "
                             "restarted", ", ".join(self._dead_threads()))
                status = EX_SOFTWARE
            self._drain()
        except BaseException:
            log.exception("the I/O loop failed: stopping Ollama and exiting")
            raise
        finally:
            # Every way out stops Ollama's whole tree: it runs in a session of
            # its own and would outlive us.
            self._stop_threads()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close()
        return status

    def _close(self) -> None:
        if self._router is not None:
            self._router.close()
        if self._security is not None:   # after the ROUTER: never one without a ZAP handler
            self._security.stop(timeout=2.0)
        if self._context is not None:
            self._context.term()
        if self._loop is not None:
            self._loop.close()
        self.outbox.close()
        self.notifier.close()

    def _loaded_models(self) -> set[str]:
        """Canonical names of the models Ollama has loaded, as its last probe saw."""
        return {names.key(m["name"]) for m in self.supervisor.snapshot().get("models") or []}

    def threads_alive(self) -> bool:
        return not self._dead_threads()

    def _dead_threads(self) -> list[str]:
        dead = []
        if not self.pool.alive():
            dead.append("a worker")
        if not self.supervisor.thread_alive():
            dead.append("the supervisor")
        if self.gpu_monitor.started and not self.gpu_monitor.is_running():
            dead.append("the GPU monitor")
        if self.metrics_listener is not None and not self.metrics_listener.alive():
            dead.append("the metrics listener")
        if self._security is not None and not self._security.alive():
            dead.append("the ZAP handler")
        return dead

    # -- signals ----------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not self._stopping:
                log.info("received %s: shutting down", signal.Signals(signum).name)
            self._stopping = True
            assert self._loop is not None
            self._loop.stopping = True
        elif signum == signal.SIGHUP and not self._stopping:
            self.reload()

    def reload(self) -> None:
        """Re-read the config and apply what can change live; drop no request; name the rest."""
        if self._reload_config is None:
            return
        self.notifier.reloading()
        try:
            new = self._reload_config()
            clients = curvekeys.authorized_clients(new)
        except config_mod.ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            self.notifier.ready()
            return
        changed = config_mod.changed_keys(self.config, new)
        pending_ollama = self.supervisor.reconfigure(new)
        self.backend.policy = RetryPolicy.from_config(new)
        self.loads.load_timeout = new.ollama.load_timeout
        self.pulls.policy = PullPolicy.from_config(new)
        self.dispatcher.defaults = GenerationDefaults.from_config(new)
        self.dispatcher.limits = Limits.from_config(new)
        self.dispatcher.admission = admission_from_config(new, self._loaded_models)
        self.pool.configure(lane_policy(new), limit_book(new))
        self.gpu_monitor.interval = new.gpu.poll_interval
        self.leak_policy = VramLeakPolicy(new.gpu.leak_threshold_bytes or None, new.gpu.leak_duration)
        set_level(new.log_level)
        requestlog.configure(new.metrics.request_log)
        if self._security is not None:
            self._security.reload(clients)
        self.config = new
        later = {Applies.DAEMON_RESTART: changed.get(Applies.DAEMON_RESTART, []),
                 Applies.OLLAMA_RESTART: sorted(set(changed.get(Applies.OLLAMA_RESTART, []))
                                                | set(pending_ollama))}
        applied = changed.get(Applies.LIVE, [])
        log.info("reloaded the configuration%s", f"; applied now: {', '.join(applied)}"
                 if applied else "")
        for applies, names in later.items():
            if names:
                log.warning("reloaded; these changes apply %s: %s", applies.value, ", ".join(names))
        self.notifier.ready()
        self._emit_status()

    # -- shutdown ---------------------------------------------------------

    def _drain(self) -> None:
        """Stop accepting, answer the queue, let in-flight work finish within the grace."""
        assert self._loop is not None
        self._stopping = self._loop.stopping = True
        self.notifier.stopping()
        stopping = Error.of(ErrorCode.SHUTTING_DOWN, "ollamad is shutting down")
        for task in self.pool.drain():
            task.expire(stopping)
        grace_end = time.monotonic() + self.config.shutdown_grace
        self._loop.run_until(lambda: not self.requests.open() or time.monotonic() >= grace_end,
                             max_poll=0.05)
        for exchange in self.requests.open():
            exchange.reject(stopping)
        self._loop.flush(time.monotonic() + 1.0)

    def _stop_threads(self) -> None:
        if self.metrics_listener is not None:
            self.metrics_listener.stop(timeout=2.0)
        self.pool.stop(timeout=2.0)
        self.gpu_monitor.stop(timeout=2.0)
        self.supervisor.stop(timeout=self.config.ollama.stop_grace + 5.0)
        log.info("ollamad stopped")

    # -- housekeeping on the I/O thread -----------------------------------

    def _housekeeping(self, now: float) -> None:
        if self._status_changed:
            self._status_changed = False
            self._emit_status()
        if now >= self._next_policy_check:
            self._next_policy_check = now + self.config.gpu.poll_interval
            self._check_vram_leak()

    def _on_supervisor_change(self, snapshot: dict[str, Any]) -> None:
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

    # -- what ops ask of the daemon (ollamad.serving.ops.Introspection) -----

    def status(self) -> dict[str, Any]:
        return self.report.status()

    def health(self) -> dict[str, Any]:
        return self.report.health()

    def metrics(self) -> dict[str, Any]:
        return self.report.metrics()

    def gpu(self) -> dict[str, Any]:
        return self.report.gpu()

    def unavailable_reason(self) -> str | None:
        return self.supervisor.unavailable_reason()

    def restart_ollama(self, reason: str) -> dict[str, Any]:
        try:
            self.supervisor.request_restart(reason)
        except SupervisorError as exc:  # external mode without a restart command
            raise OllamaFailure(ErrorCode.UNAVAILABLE, str(exc), retryable=False) from None
        return {"restarted": True, "reason": reason}

    def is_admin(self, peer: Peer) -> bool:
        return admin.is_admin(peer, self.config.admin_group)
