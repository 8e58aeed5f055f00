"""Restoring into MySQL/MariaDB: target database, schema scripts, accounts; rows via ``load``.

Scripts run statement by statement on one session, so an error names the
statement; grants whose table or routine does not exist yet are kept and
applied after each database's post-data.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pymysql

from dbbackup.backupset import TableRef
from dbbackup.engines.base import Source, iter_chunks
from dbbackup.engines.mysql import load, script
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
from dbbackup.errors import CannotCreateError

log = logging.getLogger("dbbackup.mysql")

# Errors that mean an object a grant names is not there yet.
MISSING_OBJECT_CODES = frozenset({1146, 1305, 1049, 1054})
CONNECTION_LOST_CODES = frozenset({2006, 2013, 2003, 2002, 1927, 1053})


def _snippet(statement: bytes) -> str:
    first = text(statement.strip()).splitlines()[0] if statement.strip() else ""
    return first[:100] + ("..." if len(first) > 100 else "")


class MyRestore:
    def __init__(self, endpoint: MyEndpoint, flavor: Callable[[], Flavor]) -> None:
        self.endpoint = endpoint
        self.flavor = flavor
        self._deferred_grants: list[bytes] = []
        self._row_limit: int | None = None
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
        with closing(conn):
            try:
                if self._row_limit is None:
                    self._row_limit = load.row_size_limit(conn, self.flavor())
                converted = load.json_columns(conn, target, table.name) if not self.flavor().mariadb else []
            except pymysql.err.Error as exc:
                raise describe_error(exc, f"restoring {where}", self.endpoint) from exc
            loader = load.TableLoad(conn, self.endpoint, where, table, converted, self._row_limit)
            return loader.run(source, finish)
