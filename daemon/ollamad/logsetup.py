"""Logging for the daemon: journald-native under systemd, human-readable elsewhere.

When stderr is connected to the journal (systemd sets `JOURNAL_STREAM` to the
`device:inode` of that stream, see sd_journal_stream_fd(3)), each line starts
with a `<N>` syslog priority, which journald strips and records as the
entry's priority, and carries no timestamp, since journald adds its own. Every
line of a multi-line message (a traceback) gets the prefix: journald treats
each line as an entry of its own. Elsewhere lines carry a timestamp and the
level name.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Mapping, TextIO

#: Name of the handler this module installs on the root logger, so that a
#: second `configure_logging` replaces it instead of adding another.
HANDLER_NAME = "ollamad"
#: The second handler under systemd: request lines, natively to the journal.
JOURNAL_HANDLER_NAME = "ollamad-journal"

HUMAN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"

# syslog(3) priorities, highest logging level first.
_SYSLOG_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_DEBUG_PRIORITY = 7


class JournalFormatter(logging.Formatter):
    """Prefixes every line of a record with its `<N>` syslog priority."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a logging level (custom levels round down)."""
    for threshold, priority in _SYSLOG_PRIORITIES:
        if levelno >= threshold:
            return priority
    return _DEBUG_PRIORITY


def parse_level(level: str) -> int:
    """`"debug"`, `"INFO"`, ... as a logging level; ValueError for anything else."""
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


def is_journal_stream(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Whether `stream` is the journal connection named by JOURNAL_STREAM."""
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (status.st_dev, status.st_ino)
    except (AttributeError, OSError, ValueError):
        # No JOURNAL_STREAM, a malformed one, or a stream without a file
        # descriptor (io.StringIO, a closed stream).
        return False


#: Where journald takes entries in its native protocol (systemd.journal-fields(7)).
JOURNAL_SOCKET = "/run/systemd/journal/socket"


def _has_fields(record: logging.LogRecord) -> bool:
    return bool(getattr(record, "journal_fields", None))


class JournalHandler(logging.Handler):
    """Records carrying ``journal_fields`` go to the journal natively, one datagram each,
    with those fields (``KEY=value``); when the journal cannot take one, the record
    goes to ``fallback`` as a line like any other."""

    def __init__(self, fallback: logging.Handler, path: str = JOURNAL_SOCKET):
        super().__init__()
        self._fallback = fallback
        self._path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        self.addFilter(_has_fields)

    def emit(self, record: logging.LogRecord) -> None:
        fields = {"MESSAGE": self.format(record), "PRIORITY": syslog_priority(record.levelno),
                  "SYSLOG_IDENTIFIER": "ollamad", "LOGGER": record.name,
                  **record.journal_fields}   # type: ignore[attr-defined]
        try:
            self._socket.sendto(b"".join(_journal_field(k, v) for k, v in fields.items()),
                                self._path)
        except OSError:   # no journal, or its queue full: never lose the line
            self._fallback.emit(record)

    def close(self) -> None:
        self._socket.close()
        super().close()


def _journal_field(key: str, value: object) -> bytes:
    data = str(value).encode("utf-8", "replace")
    if b"\n" not in data:
        return key.encode() + b"=" + data + b"\n"
    # The protocol's binary form: KEY, newline, 64-bit little-endian length, value.
    return key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"


def configure_logging(level: str, env: Mapping[str, str] = os.environ,
                      stream: TextIO | None = None, journal_socket: str = JOURNAL_SOCKET) -> None:
    """Send all logging to `stream` (default stderr) at `level`.

    Replaces the handler a previous call installed, so calling it again (on
    reload, in tests) never duplicates output.
    """
    stream = sys.stderr if stream is None else stream
    root = logging.getLogger()
    root.setLevel(parse_level(level))
    for handler in [h for h in root.handlers
                    if h.get_name() in (HANDLER_NAME, JOURNAL_HANDLER_NAME)]:
        root.removeHandler(handler)
        handler.close()
    handler = logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    journal = is_journal_stream(stream, env)
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter(HUMAN_FORMAT))
    if not journal:
        root.addHandler(handler)
        return
    # Under systemd, records with fields of their own (the request log) go natively.
    native = JournalHandler(handler, journal_socket)
    native.set_name(JOURNAL_HANDLER_NAME)
    native.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: not _has_fields(record))
    root.addHandler(handler)
    root.addHandler(native)


def set_level(level: str) -> None:
    """Change the level live (config reload)."""
    logging.getLogger().setLevel(parse_level(level))
