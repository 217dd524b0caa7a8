"""One log line per finished model request: who, what, how it ended, how long it took.

``ollamad.requests INFO request id=... tenant=root/voice op=generate
model=llama3.1:8b lane=interactive result=ok attempts=1 queue_wait=0.002
duration=0.413 tokens=16``. Under systemd the same figures also go to the
journal as fields of the entry (``OLLAMAD_REQUEST_ID``, ``OLLAMAD_TENANT``,
``OLLAMAD_RESULT`` ...: :class:`ollamad.logsetup.JournalHandler`), so
``journalctl OLLAMAD_RESULT=timeout`` finds them. ``metrics.request_log``
sets the level (``off``, ``debug``, ``info``); introspection ops (status,
ping ...) are never logged, a busy monitor would drown the rest.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

log = logging.getLogger("ollamad.requests")

#: Ops that get a line: those that reach Ollama.
LOGGED_OPS = frozenset({"generate", "chat", "batch", "embed", "models"})
_LEVELS = {"off": None, "debug": logging.DEBUG, "info": logging.INFO}
_level: int | None = logging.INFO


def configure(level: str) -> None:
    """``metrics.request_log``: ``off``, ``debug`` or ``info`` (a reload changes it)."""
    global _level
    _level = _LEVELS[level]


def finished(exchange: Any, result: Mapping[str, Any] | None, code: str) -> None:
    """``exchange`` ended with ``result`` (or the error ``code``)."""
    if _level is None or exchange.op not in LOGGED_OPS or not log.isEnabledFor(_level):
        return
    result = result or {}
    tenant = exchange.tenant.label() if exchange.tenant is not None else "-"
    fields = {
        "id": exchange.id, "tenant": tenant, "op": exchange.op,
        "model": exchange.model or "-", "lane": exchange.lane or "-", "result": code,
        "attempts": result.get("attempts", exchange.attempts),
        "queue_wait": _seconds(exchange.queue_wait),
        "duration": _seconds(exchange.elapsed()),
        "tokens": result.get("completion_tokens", _batch_tokens(result)),
    }
    message = "request " + " ".join(f"{key}={_value(value)}" for key, value in fields.items())
    log.log(_level, message, extra={"journal_fields": {
        f"OLLAMAD_{key.upper()}" if key != "id" else "OLLAMAD_REQUEST_ID": value
        for key, value in fields.items()}})


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _batch_tokens(result: Mapping[str, Any]) -> int:
    items = result.get("results")
    if not isinstance(items, list):
        return 0
    return sum(int((item.get("result") or {}).get("completion_tokens") or 0)
               for item in items if isinstance(item, dict) and item.get("ok"))


def _value(value: Any) -> str:
    # Ids come from clients: quote anything that would break the key=value shape.
    text = str(value)
    if not text or any(ch.isspace() or ch in '"=' for ch in text) or not text.isprintable():
        return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    return text
