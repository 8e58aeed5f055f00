"""Logging: console text, JSON lines or journald; context fields; secret redaction.

Where records go
    * Under systemd (``$JOURNAL_STREAM`` names our stderr) and with systemd-python
      installed: native journald entries with structured fields.
    * Otherwise human-friendly text (``--log-format text``) or JSON lines (``json``)
      on stderr.
    * Optionally also a log file of JSON lines, created with mode 0600 and reopened
      when logrotate moves it away.

JSON line fields (stable: scripts and log shippers rely on them)
    ``time``        local time with UTC offset, milliseconds:
                    ``2026-11-27T14:03:11.123+01:00``
    ``level``       ``debug`` | ``info`` | ``warning`` | ``error`` | ``critical``
    ``message``     the message, registered secrets replaced by ``********``
    ``logger``      dotted logger name, e.g. ``dbbackup.catalog``
    ``instance``    the instance name
    ``database``, ``backup_id``, ``event``, ``duration_sec``, ``bytes``, ``error``,
    ``exit_code``   when present (from ``log_context()`` or ``extra=``)
    any other field given through ``log_context()`` or ``extra=``
    ``traceback``   the formatted exception, when one was logged; ``error`` then
                    defaults to ``"<ExceptionType>: <text>"``
    ``stack``       the stack, when logged with ``stack_info=True``

Journald fields
    ``MESSAGE`` (with the traceback appended, if any), ``PRIORITY`` (syslog numbers),
    ``SYSLOG_IDENTIFIER=dbbackup``, ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``, and
    ``DBBACKUP_<FIELD>`` for ``instance``, ``logger`` and every context or extra
    field: ``DBBACKUP_INSTANCE``, ``DBBACKUP_DATABASE``, ``DBBACKUP_BACKUP_ID``,
    ``DBBACKUP_EVENT``, ``DBBACKUP_DURATION_SEC``, ...
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from io import TextIOWrapper
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dbbackup.errors import CannotCreateError, ConfigError, PermissionDeniedError

if TYPE_CHECKING:
    from pythonjsonlogger.json import JsonFormatter as _JsonFormatterBase
else:
    try:
        from pythonjsonlogger.json import JsonFormatter as _JsonFormatterBase
    except ImportError:  # python-json-logger 2.x
        from pythonjsonlogger.jsonlogger import JsonFormatter as _JsonFormatterBase

ROOT_LOGGER = "dbbackup"
REDACTED = "********"
MIN_SECRET_LENGTH = 4

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")

# Well-known fields come first, in this order, in JSON lines and in text output.
KNOWN_FIELDS = ("database", "backup_id", "event", "duration_sec", "bytes", "error", "exit_code")

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

# Attributes every LogRecord has; anything else on a record came from extra= or a context.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "exc_text",
    "stack_info",
}

# Marks a record whose context fields are merged and secrets redacted, so that a record
# passing several handlers is prepared exactly once.
_PREPARED_ATTR = "_dbbackup_prepared"

# Tuples of pairs, not dicts: a ContextVar default must not be mutable.
_ContextFields = tuple[tuple[str, object], ...]
_context: ContextVar[_ContextFields] = ContextVar("dbbackup_log_context", default=())

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None
_setup_lock = threading.Lock()


def get_logger(name: str) -> logging.Logger:
    """Return the logger ``name`` as a child of ``dbbackup`` (``__name__`` works as is)."""
    if name == ROOT_LOGGER or name.startswith(ROOT_LOGGER + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{ROOT_LOGGER}.{name}")


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the block.

    Nested blocks merge, inner values win. Threads see the fields only when started
    inside ``contextvars.copy_context().run``; ``extra=`` on a call overrides them.
    """
    clashing = sorted(fields.keys() & _STANDARD_ATTRS)
    if clashing:
        raise ValueError(f"log context fields clash with LogRecord attributes: {clashing}")
    merged = dict(_context.get())
    merged.update(fields)
    token = _context.set(tuple(merged.items()))
    try:
        yield
    finally:
        _context.reset(token)


def register_secret(value: str) -> None:
    """Replace ``value`` by ``********`` in every record from now on.

    Values shorter than four characters are ignored: redacting them would mangle
    ordinary words. The escaped forms a value takes inside JSON strings and reprs
    are registered too, so a secret quoted in an exception text is caught as well.
    """
    global _secret_pattern
    if len(value) < MIN_SECRET_LENGTH:
        return
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
    }
    with _secrets_lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        # Longest first, so a secret containing another is replaced whole.
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(form) for form in alternatives))


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``********``."""
    pattern = _secret_pattern
    if pattern is None:
        return text
    return pattern.sub(REDACTED, text)


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {_redact_value(key): _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    text = str(value)
    redacted = redact(text)
    # Keep the object (a Path, a datetime) unless its text form leaks a secret.
    return value if redacted == text else redacted


class _RecordFilter(logging.Filter):
    """Merge the context fields into a record, then redact secrets everywhere in it."""

    def __init__(self, instance: str) -> None:
        super().__init__()
        self._instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _PREPARED_ATTR, False):
            return True
        attrs = record.__dict__
        for key, value in _context.get():
            attrs.setdefault(key, value)
        attrs.setdefault("instance", self._instance)
        _redact_record(record)
        attrs[_PREPARED_ATTR] = True
        return True


def _redact_record(record: logging.LogRecord) -> None:
    # Args are merged into the message first: a secret may hide in any argument's str().
    try:
        message = record.getMessage()
    except (TypeError, ValueError, KeyError):
        message = f"{record.msg!s} (arguments that did not fit the message: {record.args!r})"
    record.msg = redact(message)
    record.args = None
    for key in list(record.__dict__):
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            record.__dict__[key] = _redact_value(record.__dict__[key])


def _record_fields(record: logging.LogRecord) -> dict[str, object]:
    """Context and extra fields of a record: the known ones first, then the rest."""
    extras = {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and not key.startswith("_") and key != "instance"
    }
    if record.exc_info and record.exc_info[1] is not None and "error" not in extras:
        exc = record.exc_info[1]
        extras["error"] = redact(f"{type(exc).__name__}: {exc}")
    fields = {key: extras.pop(key) for key in KNOWN_FIELDS if key in extras}
    fields.update(extras)
    return fields


def _level_name(record: logging.LogRecord) -> str:
    return record.levelname.lower()


class TextFormatter(logging.Formatter):
    """``2026-11-27 14:03:11 INFO  [main] message (database=app backup_id=...)``."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        instance = getattr(record, "instance", "-")
        line = f"{when} {record.levelname:<5} [{instance}] {record.getMessage()}"
        fields = _record_fields(record)
        if fields:
            line += " (" + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items()) + ")"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        # Last line of defence: covers exception texts and anything a field's str() leaked.
        return redact(line)


def _text_value(value: object) -> str:
    text = str(value)
    if not text or any(ch.isspace() or ch in '"=()' for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class JsonLineFormatter(_JsonFormatterBase):
    """One JSON object per line with the fields listed in the module docstring."""

    def __init__(self) -> None:
        super().__init__(reserved_attrs=sorted(_STANDARD_ATTRS), json_ensure_ascii=False)

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        # The base class gathers the extras and the formatted exception and stack.
        super().add_fields(log_data, record, message_dict)
        ordered: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": _level_name(record),
            "message": record.getMessage(),
            "logger": record.name,
            "instance": getattr(record, "instance", None),
        }
        ordered.update(_record_fields(record))
        if log_data.get("exc_info"):
            ordered["traceback"] = log_data["exc_info"]
        if log_data.get("stack_info"):
            ordered["stack"] = log_data["stack_info"]
        log_data.clear()
        # Redacting values (not the serialized line) keeps the line valid JSON.
        log_data.update({redact(key): _redact_value(value) for key, value in ordered.items()})


class JournaldHandler(logging.Handler):
    """Send records to journald with the fields listed in the module docstring."""

    def __init__(self, send: Callable[..., object]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message, fields = journal_fields(record)
            self._send(message, **fields)
        except (OSError, ValueError, TypeError, UnicodeError):
            # Logging must not crash a backup; handleError reports on stderr.
            self.handleError(record)


def journal_fields(record: logging.LogRecord) -> tuple[str, dict[str, object]]:
    """The journald MESSAGE and the other fields for ``record``."""
    message = record.getMessage()
    if record.exc_info:
        message += "\n" + logging.Formatter().formatException(record.exc_info)
    fields: dict[str, object] = {
        "CODE_FILE": record.pathname,
        "CODE_LINE": record.lineno,
        "CODE_FUNC": record.funcName,
        "PRIORITY": str(_SYSLOG_PRIORITY.get(record.levelno, 6)),
        "SYSLOG_IDENTIFIER": ROOT_LOGGER,
        "DBBACKUP_LOGGER": record.name,
        "DBBACKUP_INSTANCE": redact(str(getattr(record, "instance", ""))),
    }
    for key, value in _record_fields(record).items():
        if value is not None:
            fields[_journal_field_name(key)] = redact(str(value))
    return redact(message), fields


def _journal_field_name(key: str) -> str:
    # Journal field names: A-Z, 0-9 and _, at most 64 characters.
    return ("DBBACKUP_" + re.sub(r"[^A-Z0-9_]", "_", key.upper()))[:64]


class PrivateWatchedFileHandler(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler that creates its file 0600 and never follows a symlink."""

    def _open(self) -> TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.baseFilename, flags, 0o600)
        try:
            return open(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)
        except BaseException:
            os.close(fd)
            raise

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.reopenIfNeeded()
        except OSError:
            # A failed reopen after rotation must not take the program down with it.
            self.handleError(record)
            return
        logging.FileHandler.emit(self, record)


def _journal_send() -> Callable[..., object] | None:
    try:
        import systemd.journal as journal
    except ImportError:
        return None
    send: Callable[..., object] = journal.send
    return send


def _stream_is_journal(stream: TextIO) -> bool:
    """True when systemd connected ``stream`` to the journal ($JOURNAL_STREAM)."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _console_handler(fmt: str, stream: TextIO) -> logging.Handler:
    send = _journal_send() if _stream_is_journal(stream) else None
    if send is not None:
        return JournaldHandler(send)
    handler: logging.Handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else TextFormatter())
    return handler


def _file_handler(log_file: Path) -> logging.Handler:
    try:
        handler = PrivateWatchedFileHandler(log_file, encoding="utf-8")
    except FileNotFoundError as exc:
        raise CannotCreateError(
            f"cannot create log file {log_file}: {exc.strerror}",
            hint=f"create the directory {log_file.parent} first",
        ) from exc
    except PermissionError as exc:
        raise PermissionDeniedError(
            f"cannot open log file {log_file}: {exc.strerror}",
            hint="check the owner and mode of the file and its directory",
        ) from exc
    except OSError as exc:
        raise CannotCreateError(
            f"cannot open log file {log_file}: {exc.strerror or exc}",
            hint="the log file must be a regular file, not a symlink; check the path",
        ) from exc
    handler.setFormatter(JsonLineFormatter())
    return handler


def setup_logging(
    *,
    level: str = "info",
    fmt: str = "text",
    instance: str = "default",
    stream: TextIO | None = None,
    log_file: Path | None = None,
) -> None:
    """Configure the ``dbbackup`` logger; calling it again replaces the previous setup.

    ``stream`` defaults to ``sys.stderr``. Raises ConfigError for an unknown level or
    format, CannotCreateError/PermissionDeniedError when ``log_file`` cannot be opened.
    """
    numeric_level = LEVELS.get(level.lower())
    if numeric_level is None:
        raise ConfigError(f"unknown log level {level!r}", hint=f"use one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown log format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    handlers = [_console_handler(fmt, stream if stream is not None else sys.stderr)]
    if log_file is not None:
        handlers.append(_file_handler(log_file))
    record_filter = _RecordFilter(instance)
    for handler in handlers:
        handler.addFilter(record_filter)
    logger = logging.getLogger(ROOT_LOGGER)
    with _setup_lock:
        _remove_handlers(logger)
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(numeric_level)
        # Records stay with our handlers: a foreign root handler would not redact secrets.
        logger.propagate = False


def reset_logging() -> None:
    """Undo setup_logging(): close our handlers and let records propagate again (tests)."""
    logger = logging.getLogger(ROOT_LOGGER)
    with _setup_lock:
        _remove_handlers(logger)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def _remove_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
