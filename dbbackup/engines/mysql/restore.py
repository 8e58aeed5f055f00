"""Restoring into MySQL/MariaDB: target database, schema scripts, table rows, accounts.

Table rows go in with ``LOAD DATA LOCAL INFILE`` fed through a pipe, in one
transaction that commits only after the object's checksum has been proven
and the server reported no warning: corrupt, cut or altered rows never land.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import pymysql

from dbbackup.backupset import TableRef
from dbbackup.engines.base import Source, iter_chunks
from dbbackup.engines.mysql import infile, script, tsv
from dbbackup.engines.mysql.connection import (
    Flavor,
    MyConnection,
    MyEndpoint,
    closing,
    connect,
    describe_error,
    error_code,
    error_text,
    execute,
    query,
    quote_ident,
    text,
)
from dbbackup.errors import CannotCreateError, DataError, DbBackupError, IOFailure, PermissionDeniedError

log = logging.getLogger("dbbackup.mysql")

# Restored rows are what the server once accepted; only NO_AUTO_VALUE_ON_ZERO
# matters (a stored 0 stays 0), and any conversion shows up as a warning.
LOAD_SQL_MODE = "NO_AUTO_VALUE_ON_ZERO,ALLOW_INVALID_DATES"
FEEDER_JOIN_TIMEOUT = 60.0
# Errors that mean an object a grant names is not there yet.
MISSING_OBJECT_CODES = frozenset({1146, 1305, 1049, 1054})
CONNECTION_LOST_CODES = frozenset({2006, 2013, 2003, 2002, 1927, 1053})


def _snippet(statement: bytes) -> str:
    first = text(statement.strip()).splitlines()[0] if statement.strip() else ""
    return first[:100] + ("..." if len(first) > 100 else "")


class _Feeder(threading.Thread):
    """Copies a source into the write end of a pipe; remembers what went wrong."""

    def __init__(self, source: Source, fd: int) -> None:
        super().__init__(name="load-feeder", daemon=True)
        self.source = source
        self.fd = fd
        self.error: BaseException | None = None
        self.written = 0
        self.lines = tsv.LineTracker()
        self.broken_pipe = False

    def run(self) -> None:
        try:
            with os.fdopen(self.fd, "wb", buffering=0) as pipe:
                for chunk in iter_chunks(self.source):
                    self.lines.feed(chunk)
                    view = memoryview(chunk)
                    while view:
                        sent = pipe.write(view)
                        view = view[sent or 0 :]
                    self.written += len(chunk)
        except BrokenPipeError:
            # The load ended early (the server refused it); its error is the one to report.
            self.broken_pipe = True
        except BaseException as exc:  # noqa: BLE001 - handed to the loading thread
            self.error = exc


class MyRestore:
    def __init__(self, endpoint: MyEndpoint, flavor: Callable[[], Flavor]) -> None:
        self.endpoint = endpoint
        self.flavor = flavor
        self._deferred_grants: list[bytes] = []
        self._deferred_lock = threading.Lock()

    def _connect(self, database: str | None, context: str, **kwargs: Any) -> MyConnection:
        return connect(self.endpoint, database, context=context, **kwargs)

    def database_exists(self, name: str) -> bool:
        with closing(self._connect(None, "checking the target")) as conn:
            rows = query(conn, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
        return bool(rows)

    def database_is_empty(self, name: str) -> bool:
        with closing(self._connect(None, "checking the target")) as conn:
            rows = query(
                conn,
                "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s)"
                " + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s)"
                " + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s)",
                (name, name, name),
            )
        return int(rows[0][0]) == 0

    def prepare_target(self, name: str, properties: dict[str, Any], *, clean: bool) -> None:
        """Create the target database; an existing one must be empty or ``clean`` given."""
        context = f"preparing database {name}"
        exists = self.database_exists(name)
        if exists and not clean and not self.database_is_empty(name):
            raise CannotCreateError(
                f"database {name!r} already exists and is not empty",
                hint="restore into a new name with --target-db NAME, or pass --clean to drop and recreate it",
            )
        create = f"CREATE DATABASE {quote_ident(name)}"
        if properties.get("charset"):
            create += f" CHARACTER SET {quote_ident(properties['charset'])}"
        if properties.get("collation"):
            create += f" COLLATE {quote_ident(properties['collation'])}"
        with closing(self._connect(None, context)) as conn:
            try:
                if exists:
                    log.info("dropping database %s before restoring it", name)
                    execute(conn, f"DROP DATABASE {quote_ident(name)}")
                execute(conn, create)
                if properties.get("comment") and self.flavor().mariadb:
                    comment = (properties["comment"],)
                    execute(conn, f"ALTER DATABASE {quote_ident(name)} COMMENT = %s", comment)
            except pymysql.err.Error as exc:
                raise describe_error(exc, context, self.endpoint) from exc

    def run_script(self, database: str | None, statements: list[bytes], context: str) -> None:
        with closing(self._connect(database, context)) as conn:
            for number, statement in enumerate(statements, start=1):
                try:
                    execute(conn, statement)
                except pymysql.err.Error as exc:
                    where = f"{context}: statement {number} ({_snippet(statement)})"
                    raise describe_error(exc, where, self.endpoint) from exc

    def restore_ddl(self, target: str, section: str, source: Source) -> None:
        data = b"".join(iter_chunks(source))
        self.run_script(target, script.parse(data, name=section), f"restoring {section} of {target}")
        if section == "post-data":
            self._retry_deferred_grants()

    def restore_sql(self, target: str, data: bytes) -> None:
        statements = script.parse(data, name="sequences")
        if statements:
            self.run_script(target, statements, f"restoring sequences of {target}")

    def restore_globals(self, data: bytes) -> list[str]:
        """Apply users, roles and grants; return the statements that failed and why.

        Grants on single tables or routines cannot exist before their object
        does; they are kept and applied again after each database's post-data.
        """
        problems: list[str] = []
        with closing(self._connect(None, "restoring users and grants")) as conn:
            for statement in script.parse(data, name="globals"):
                try:
                    execute(conn, statement)
                except pymysql.err.Error as exc:
                    code = error_code(exc)
                    if code in CONNECTION_LOST_CODES:
                        raise describe_error(exc, "restoring users and grants", self.endpoint) from exc
                    if code in MISSING_OBJECT_CODES and statement.startswith(b"GRANT "):
                        self._deferred_grants.append(statement)
                        continue
                    problems.append(f"{_snippet(statement)}: {error_text(exc)}")
        if self._deferred_grants:
            log.info("%d grant(s) wait for the objects they name", len(self._deferred_grants))
        return problems

    def _retry_deferred_grants(self) -> None:
        with self._deferred_lock:
            pending, self._deferred_grants = self._deferred_grants, []
            if not pending:
                return
            with closing(self._connect(None, "restoring grants")) as conn:
                for statement in pending:
                    try:
                        execute(conn, statement)
                    except pymysql.err.Error as exc:
                        if error_code(exc) not in MISSING_OBJECT_CODES:
                            log.error(
                                "restoring a grant failed: %s: %s", _snippet(statement), error_text(exc)
                            )
                            continue
                        self._deferred_grants.append(statement)

    def report_unapplied_grants(self) -> None:
        for statement in self._deferred_grants:
            log.error(
                "grant not restored, the object it names was not restored: %s",
                _snippet(statement),
                extra={"event": "globals_error"},
            )

    def restore_table(self, target: str, table: TableRef, source: Source, finish: Callable[[], None]) -> int:
        """Load one table's rows; commit only after ``finish`` proved the checksum."""
        where = f"{target}: table {table.name}"
        conn = self._connect(target, f"restoring {where}", autocommit=False, local_infile=True)
        read_fd, write_fd = os.pipe()
        feeder = _Feeder(source, write_fd)
        try:
            with closing(conn):
                try:
                    execute(
                        conn,
                        f"SET sql_mode = '{LOAD_SQL_MODE}', foreign_key_checks = 0, unique_checks = 0",
                    )
                    statement = tsv.load_statement(
                        f"/dev/fd/{read_fd}", table.name, table.columns, self._converted(conn, target, table)
                    )
                    feeder.start()
                    with infile.allow(conn, f"/dev/fd/{read_fd}"):
                        execute(conn, statement)
                    warnings = query(conn, "SHOW WARNINGS")
                except infile.InfileRefused as exc:
                    raise PermissionDeniedError(f"restoring {where}: {exc.args[1]}") from exc
                except pymysql.err.Error as exc:
                    raise self._load_error(exc, where, feeder) from exc
                finally:
                    # Without a reader left, a feeder stuck on a full pipe gets EPIPE and ends.
                    os.close(read_fd)
                    if feeder.ident is not None:
                        feeder.join(FEEDER_JOIN_TIMEOUT)
                if feeder.error is not None:
                    raise feeder.error
                if feeder.is_alive() or feeder.broken_pipe:
                    raise IOFailure(f"restoring {where}: the server stopped reading the rows early")
                _check_warnings(where, warnings)
                finish()
                conn.commit()
        except BaseException:
            if feeder.ident is None:
                os.close(write_fd)
            raise
        return feeder.written

    def _converted(self, conn: MyConnection, target: str, table: TableRef) -> list[str]:
        if self.flavor().mariadb:
            return []
        rows = query(
            conn,
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
            "AND DATA_TYPE = 'json'",
            (target, table.name),
        )
        return [text(row[0]) for row in rows]

    def _load_error(self, exc: pymysql.err.Error, where: str, feeder: _Feeder) -> DbBackupError:
        if error_code(exc) in (1153, 1301):
            return DataError(
                f"restoring {where}: a row of about {feeder.lines.longest} bytes is larger than the "
                f"server's max_allowed_packet ({error_text(exc)})",
                hint=f"raise it on the server to at least {feeder.lines.longest + 1024}: "
                "SET GLOBAL max_allowed_packet = ... (and in its configuration file), then restore again",
            )
        return describe_error(exc, f"restoring {where}", self.endpoint)


def _check_warnings(where: str, warnings: list[tuple[Any, ...]]) -> None:
    """Any warning means a value was changed on the way in; nothing is committed then."""
    serious = [row for row in warnings if text(row[0]) in ("Warning", "Error")]
    if serious:
        details = "; ".join(f"({text(row[1])}) {text(row[2])}" for row in serious[:3])
        raise DataError(
            f"restoring {where}: the server changed rows while loading them: {details}",
            hint="the target's definition differs from the backup's or the set is damaged; "
            "nothing of this table was committed",
        )
