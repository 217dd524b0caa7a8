"""Logging setup: journald priority prefixes under systemd, timestamps elsewhere."""

from __future__ import annotations

import logging
import os
import re
import socket

import pytest

from ollamad.logsetup import HANDLER_NAME, configure_logging, parse_level, set_level

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if (h.get_name() or "").startswith(HANDLER_NAME)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.fixture
def log_file(tmp_path):
    with open(tmp_path / "stderr", "w+") as stream:
        yield stream


def journal_env(stream) -> dict[str, str]:
    status = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}


def written(stream) -> list[str]:
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


def test_journal_lines_carry_priority_and_no_timestamp(log_file):
    configure_logging("debug", env=journal_env(log_file), stream=log_file)
    log = logging.getLogger("ollamad.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert written(log_file) == ["<7>ollamad.test: d", "<6>ollamad.test: i", "<4>ollamad.test: w",
                                 "<3>ollamad.test: e", "<2>ollamad.test: c"]


def test_journal_prefixes_every_line_of_a_traceback(log_file):
    configure_logging("info", env=journal_env(log_file), stream=log_file)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("ollamad.test").exception("failed")
    lines = written(log_file)
    assert lines[0] == "<3>ollamad.test: failed"
    assert lines[-1] == "<3>RuntimeError: boom"
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert not any(TIMESTAMP.search(line) for line in lines)


@pytest.mark.parametrize("env", [{}, {"JOURNAL_STREAM": "1:2"}, {"JOURNAL_STREAM": "garbage"}])
def test_human_format_elsewhere(log_file, env):
    configure_logging("info", env=env, stream=log_file)
    logging.getLogger("ollamad.test").warning("careful")
    [line] = written(log_file)
    assert re.fullmatch(TIMESTAMP.pattern + r",\d{3} WARNING ollamad\.test: careful", line)


def test_stream_without_file_descriptor_gets_human_format():
    import io

    stream = io.StringIO()
    configure_logging("info", env={"JOURNAL_STREAM": "1:2"}, stream=stream)
    logging.getLogger("ollamad.test").info("hello")
    assert re.fullmatch(TIMESTAMP.pattern + r",\d{3} INFO    ollamad\.test: hello\n", stream.getvalue())


def test_configuring_twice_does_not_duplicate(log_file):
    configure_logging("info", env={}, stream=log_file)
    configure_logging("info", env=journal_env(log_file), stream=log_file)
    logging.getLogger("ollamad.test").info("once")
    assert written(log_file) == ["<6>ollamad.test: once"]
    assert [h.get_name() for h in logging.getLogger().handlers].count(HANDLER_NAME) == 1


def test_set_level_applies_live(log_file):
    configure_logging("info", env=journal_env(log_file), stream=log_file)
    log = logging.getLogger("ollamad.test")
    log.debug("hidden")
    set_level("DEBUG")
    log.debug("shown")
    set_level("warning")
    log.info("hidden too")
    assert written(log_file) == ["<7>ollamad.test: shown"]


def test_unknown_level_is_rejected():
    assert parse_level("Error") == logging.ERROR
    with pytest.raises(ValueError, match="verbose"):
        parse_level("verbose")


def test_under_systemd_request_lines_go_to_the_journal_with_fields_of_their_own(log_file, tmp_path):
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal.sock"))
    journal.settimeout(5)
    try:
        configure_logging("info", env=journal_env(log_file), stream=log_file,
                          journal_socket=str(tmp_path / "journal.sock"))
        logging.getLogger("ollamad.requests").info("request id=r1 result=ok", extra={
            "journal_fields": {"OLLAMAD_REQUEST_ID": "r1", "OLLAMAD_RESULT": "ok",
                               "OLLAMAD_NOTE": "two\nlines"}})
        logging.getLogger("ollamad.test").info("plain")
        entry = journal.recv(65536)
    finally:
        journal.close()
    assert b"MESSAGE=request id=r1 result=ok\n" in entry and b"PRIORITY=6\n" in entry
    assert b"OLLAMAD_REQUEST_ID=r1\n" in entry and b"OLLAMAD_RESULT=ok\n" in entry
    # A value with a newline takes the protocol's length-prefixed form.
    assert b"OLLAMAD_NOTE\n" + (9).to_bytes(8, "little") + b"two\nlines\n" in entry
    assert written(log_file) == ["<6>ollamad.test: plain"]   # not twice


def test_without_a_journal_socket_the_request_line_is_not_lost(log_file, tmp_path):
    configure_logging("info", env=journal_env(log_file), stream=log_file,
                      journal_socket=str(tmp_path / "absent.sock"))
    logging.getLogger("ollamad.requests").info("request id=r2", extra={
        "journal_fields": {"OLLAMAD_REQUEST_ID": "r2"}})
    assert written(log_file) == ["<6>ollamad.requests: request id=r2"]
