"""Tests for dbbackup.log: formats, levels, context fields, redaction, log file, journald."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import os
import re
import secrets
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from harness.journal import fake_journal, parse_native

from dbbackup.errors import ConfigError, DbBackupError
from dbbackup.log import (
    get_logger,
    log_context,
    register_secret,
    reset_logging,
    setup_logging,
)

pytestmark = pytest.mark.timeout(30)



@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    yield
    reset_logging()


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in a zone at UTC+01:30 (POSIX TZ offsets are inverted)."""
    monkeypatch.setenv("TZ", "XYZ-01:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def new_secret() -> str:
    return "pw-" + secrets.token_hex(8)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def json_setup(level: str = "info") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level=level, fmt="json", instance="main", stream=stream)
    return stream


def test_json_line_has_the_documented_fields_in_order(local_zone: None) -> None:
    stream = json_setup()
    log = get_logger("dbbackup.actions.backup")
    with log_context(database="app", backup_id="20261127T140311+0130-full-ab12"):
        log.info(
            "backed up %s",
            "app",
            extra={"exit_code": 0, "custom": "x", "event": "backup.done", "bytes": 42},
        )
    (line,) = json_lines(stream)
    assert list(line) == [
        "time",
        "level",
        "message",
        "logger",
        "instance",
        "database",
        "backup_id",
        "event",
        "bytes",
        "exit_code",
        "custom",
    ]
    assert line["level"] == "info"
    assert line["message"] == "backed up app"
    assert line["logger"] == "dbbackup.actions.backup"
    assert line["instance"] == "main"
    assert line["bytes"] == 42
    assert line["exit_code"] == 0


def test_json_time_is_local_with_offset_and_milliseconds(local_zone: None) -> None:
    stream = json_setup()
    before = datetime.now().astimezone()
    get_logger("t").warning("tick")
    (line,) = json_lines(stream)
    stamp = str(line["time"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+01:30", stamp), stamp
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(hours=1, minutes=30)
    assert abs(parsed - before) < timedelta(seconds=5)


def test_json_exception_gives_traceback_and_error() -> None:
    stream = json_setup()
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        get_logger("t").exception("backup failed")
    (line,) = json_lines(stream)
    assert line["level"] == "error"
    assert line["error"] == "RuntimeError: disk on fire"
    assert "Traceback (most recent call last)" in str(line["traceback"])


def test_text_format_is_one_readable_line() -> None:
    stream = io.StringIO()
    setup_logging(fmt="text", instance="main", stream=stream)
    with log_context(database="app", backup_id="b1"):
        get_logger("t").info("started", extra={"event": "backup start"})
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO  \[main\] started "
        r'\(database=app backup_id=b1 event="backup start"\)\n',
        stream.getvalue(),
    ), stream.getvalue()


def test_level_filters_records() -> None:
    stream = json_setup(level="warning")
    log = get_logger("t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [line["message"] for line in json_lines(stream)] == ["w", "e"]

    stream = json_setup(level="DEBUG")
    log.debug("d")
    assert [line["level"] for line in json_lines(stream)] == ["debug"]


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "text"), ("info", "xml")])
def test_unknown_level_or_format_is_a_config_error(level: str, fmt: str) -> None:
    with pytest.raises(ConfigError) as raised:
        setup_logging(level=level, fmt=fmt)
    assert raised.value.exit_code == 78
    assert raised.value.hint and "use one of" in raised.value.hint


def test_setup_again_replaces_handlers() -> None:
    first = json_setup()
    second = json_setup()
    get_logger("t").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1
    assert len(logging.getLogger("dbbackup").handlers) == 1


def test_get_logger_is_a_child_of_dbbackup() -> None:
    assert get_logger("catalog").name == "dbbackup.catalog"
    assert get_logger("dbbackup.catalog").name == "dbbackup.catalog"
    assert get_logger("dbbackup").name == "dbbackup"


def test_context_nests_restores_and_yields_to_extra() -> None:
    stream = json_setup()
    log = get_logger("t")
    with log_context(database="a", event="outer"):
        with log_context(database="b"):
            log.info("inner")
        log.info("outer", extra={"event": "explicit"})
    log.info("none")
    inner, outer, none = json_lines(stream)
    assert (inner["database"], inner["event"]) == ("b", "outer")
    assert (outer["database"], outer["event"]) == ("a", "explicit")
    assert "database" not in none and "event" not in none


def test_context_reaches_threads_started_with_copy_context() -> None:
    stream = json_setup()
    log = get_logger("t")
    threads = []
    for name in ("db1", "db2", "db3"):
        with log_context(database=name):
            context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(log.info, "in thread"))
        threads.append(thread)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(str(line["database"]) for line in json_lines(stream)) == ["db1", "db2", "db3"]


def test_context_rejects_logrecord_attribute_names() -> None:
    with pytest.raises(ValueError, match="levelname"), log_context(levelname="x"):
        pass


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_everywhere(fmt: str) -> None:
    secret = new_secret()
    quoted = 'q"uo\\te-' + secrets.token_hex(4)
    register_secret(secret)
    register_secret(quoted)
    stream = io.StringIO()
    setup_logging(fmt=fmt, stream=stream)
    log = get_logger("t")
    with log_context(dsn=f"postgresql://u:{secret}@db/app"):
        log.info(f"message {secret}")
        log.info("args %s %r", secret, {"password": quoted})
        log.info("extra", extra={"conn": {"password": secret, "list": [quoted]}})
        try:
            raise ConnectionError(f"auth failed for {secret!r} and {quoted!r}")
        except ConnectionError:
            log.exception("exception")
    output = stream.getvalue()
    assert secret not in output
    assert quoted not in output
    assert json.dumps(quoted)[1:-1] not in output
    assert repr(quoted)[1:-1] not in output
    assert output.count("********") >= 8
    if fmt == "json":
        lines = json_lines(stream)
        assert len(lines) == 4  # still valid JSON after redaction
        assert lines[2]["conn"] == {"password": "********", "list": ["********"]}


class Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_records_are_redacted_before_any_formatting() -> None:
    secret = new_secret()
    register_secret(secret)
    json_setup()
    collector = Collector()  # has no filter or formatter of ours
    logging.getLogger("dbbackup").addHandler(collector)
    with log_context(database=f"db-{secret}"):
        get_logger("t").info("a %s b", secret, extra={"nested": {"k": [secret]}})
    (record,) = collector.records
    assert (record.msg, record.args) == ("a ******** b", None)
    assert record.__dict__["database"] == "db-********"
    assert record.__dict__["nested"] == {"k": ["********"]}


def test_short_secrets_are_ignored() -> None:
    register_secret("abc")
    stream = json_setup()
    get_logger("t").info("abcdef")
    assert json_lines(stream)[0]["message"] == "abcdef"


def test_bad_format_arguments_do_not_raise() -> None:
    stream = json_setup()
    get_logger("t").info("count %d", "not a number")
    message = str(json_lines(stream)[0]["message"])
    assert message.startswith("count %d") and "not a number" in message


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_log_file_is_0600_json(tmp_path: Path, umask: int) -> None:
    log_file = tmp_path / "dbbackup.log"
    old = os.umask(umask)
    try:
        setup_logging(stream=io.StringIO(), log_file=log_file, instance="main")
        get_logger("t").info("to file", extra={"event": "x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    (line,) = (json.loads(text) for text in log_file.read_text().splitlines())
    assert (line["message"], line["instance"], line["event"]) == ("to file", "main", "x")


def test_log_file_is_reopened_after_rotation(tmp_path: Path) -> None:
    log_file = tmp_path / "dbbackup.log"
    setup_logging(stream=io.StringIO(), log_file=log_file)
    log = get_logger("t")
    log.info("before")
    log_file.rename(tmp_path / "dbbackup.log.1")
    log.info("after")
    assert json.loads((tmp_path / "dbbackup.log.1").read_text())["message"] == "before"
    assert json.loads(log_file.read_text())["message"] == "after"
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600


def test_log_file_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "dbbackup.log"
    link.symlink_to(target)
    with pytest.raises(DbBackupError) as raised:
        setup_logging(stream=io.StringIO(), log_file=link)
    assert raised.value.exit_code == 73
    assert target.read_text() == ""


def test_log_file_in_missing_directory_is_cannot_create(tmp_path: Path) -> None:
    with pytest.raises(DbBackupError) as raised:
        setup_logging(stream=io.StringIO(), log_file=tmp_path / "nope" / "x.log")
    assert raised.value.exit_code == 73
    assert raised.value.hint and "nope" in raised.value.hint


def stderr_id() -> str:
    st = os.fstat(sys.stderr.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_foreign_journal_stream_keeps_console_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    stream = json_setup()
    get_logger("t").info("console")
    assert json_lines(stream)[0]["message"] == "console"


@pytest.fixture
def journal_socket() -> Iterator[socket.socket]:
    """A fake journald: a datagram socket at the path libsystemd sends to."""
    with fake_journal() as sock:
        yield sock


def test_journald_receives_native_fields(
    journal_socket: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    secret = new_secret()
    register_secret(secret)
    monkeypatch.setenv("JOURNAL_STREAM", stderr_id())
    setup_logging(fmt="json", instance="main")
    log = get_logger("dbbackup.actions.backup")
    with log_context(database="app", backup_id="b1"):
        log.info("done with %s", secret, extra={"event": "backup.done", "duration_sec": 1.5, "bytes": 7})
        log.warning("line one\nline two")
    first = parse_native(journal_socket.recv(65536))
    second = parse_native(journal_socket.recv(65536))
    assert first["MESSAGE"] == "done with ********"
    assert first["PRIORITY"] == "6"
    assert first["SYSLOG_IDENTIFIER"] == "dbbackup"
    assert first["DBBACKUP_INSTANCE"] == "main"
    assert first["DBBACKUP_DATABASE"] == "app"
    assert first["DBBACKUP_BACKUP_ID"] == "b1"
    assert first["DBBACKUP_EVENT"] == "backup.done"
    assert first["DBBACKUP_DURATION_SEC"] == "1.5"
    assert first["DBBACKUP_BYTES"] == "7"
    assert first["DBBACKUP_LOGGER"] == "dbbackup.actions.backup"
    assert first["CODE_FUNC"] == "test_journald_receives_native_fields"
    assert second["MESSAGE"] == "line one\nline two"  # sent in the binary-safe form
    assert second["PRIORITY"] == "4"
    assert capfd.readouterr().err == ""
