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
import sys
from typing import Mapping, TextIO

#: Name of the handler this module installs on the root logger, so that a
#: second `configure_logging` replaces it instead of adding another.
HANDLER_NAME = "ollamad"

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


def configure_logging(level: str, env: Mapping[str, str] = os.environ,
                      stream: TextIO | None = None) -> None:
    """Send all logging to `stream` (default stderr) at `level`.

    Replaces the handler a previous call installed, so calling it again (on
    reload, in tests) never duplicates output.
    """
    stream = sys.stderr if stream is None else stream
    root = logging.getLogger()
    root.setLevel(parse_level(level))
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
        handler.close()
    handler = logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JournalFormatter() if is_journal_stream(stream, env)
                         else logging.Formatter(HUMAN_FORMAT))
    root.addHandler(handler)


def set_level(level: str) -> None:
    """Change the level live (config reload)."""
    logging.getLogger().setLevel(parse_level(level))
