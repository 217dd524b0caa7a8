"""The endpoint's security as the daemon runs it: the ZAP handler, refusals, reloads.

:meth:`EndpointSecurity.start` reads the key files (:func:`ollamad.curvekeys.security`,
whose :class:`~ollamad.configspec.ConfigError` stops start-up: unsafe tcp, a bad
file), starts the ZAP handler (:mod:`.zap`) and says in the log what the
endpoint's peers are proved by. A reload swaps in the new authorized clients:
new connections are asked about with them, connections already made stay.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from ollamad import curvekeys
from ollamad.metrics import Metrics
from ollamad.serving.router import BindError
from ollamad.serving.zap import RefusalLog, ZapHandler, ZapPolicy, handshake_failure

log = logging.getLogger("ollamad")


class EndpointSecurity:
    def __init__(self, security: curvekeys.Security, zap: ZapHandler, metrics: Metrics):
        self.security = security
        self._zap = zap
        self._metrics = metrics
        self._handshake_log = RefusalLog()

    @classmethod
    def start(cls, context: zmq.Context, config: Any, metrics: Metrics) -> "EndpointSecurity":
        """Check the endpoint's security and start its ZAP handler (call before binding)."""
        security = curvekeys.security(config)
        zap = ZapHandler(context, ZapPolicy(security.null_allowed, security.clients),
                         on_refusal=metrics.count_auth_refusal)
        try:
            zap.start()
        except RuntimeError as exc:
            raise BindError(str(exc)) from None
        if security.curve is not None:
            log.info("CURVE on %s: server public key %s; %d authorized clients in %s",
                     config.socket, security.curve.public.decode(),
                     len(security.clients.names), security.clients.path)
        elif security.open_tcp:
            log.warning("%s has no CURVE: any local user can connect, unauthenticated, and "
                        "send requests and read the answers, prompts included, unencrypted. "
                        "To serve it with keys: %s", config.socket, curvekeys.HOW_TO_SET_UP)
        return cls(security, zap, metrics)

    @property
    def curve_secret_key(self) -> bytes | None:
        """The server's secret key for the ROUTER (None: no CURVE)."""
        return self.security.curve.secret if self.security.curve is not None else None

    def handshake_failed(self, code: int) -> None:
        """A peer failed the ZeroMQ handshake (from the ROUTER's monitor, on the I/O thread)."""
        self._metrics.count_handshake_failure()
        self._handshake_log.refused("a peer", handshake_failure(code))

    def reload(self, clients: curvekeys.AuthorizedClients) -> None:
        old = self._zap.policy.clients
        self._zap.policy = ZapPolicy(self._zap.policy.null_allowed, clients)
        if old.names == clients.names:
            return
        added = sorted(set(clients.names.values()) - set(old.names.values()))
        revoked = sorted(set(old.names.values()) - set(clients.names.values()))
        log.info("authorized clients: %d keys%s%s (connections already open stay)",
                 len(clients.names), f"; added {', '.join(added)}" if added else "",
                 f"; revoked {', '.join(revoked)}" if revoked else "")

    def alive(self) -> bool:
        return self._zap.alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the ZAP handler: only after the ROUTER is closed."""
        self._zap.stop(timeout)
