"""The MySQL/MariaDB engine: SQL over PyMySQL, no client tools, nothing of storage.

A database's backup is

- ``pre-data.sql``: sequences (MariaDB) and ``CREATE TABLE`` statements;
- ``data/NNNNN.tsv``: one object per table, LOAD DATA text (see ``tsv``),
  dumped in parallel by ``jobs`` sessions that share one snapshot (see
  ``dump``);
- ``sequences.sql`` (MariaDB, when there are sequences): their positions;
- ``post-data.sql``: routines, views, triggers and events.

The ``.sql`` objects are scripts the mariadb/mysql client runs as they are
(``mariadb --binary-mode DB < pre-data.sql``); a whole-server backup adds
``globals.sql`` with users, roles and grants. Restores load table rows with
``LOAD DATA LOCAL INFILE`` from a pipe, in parallel, one transaction per table.

Why this format (measured on 1 million rows, 200 MB, MariaDB 10.11): PyMySQL
decoding every field in Python read 17 MB/s; letting the server escape the
short columns and send one field per row read 40 MB/s, close to mariadb-dump
on the same machine. Restoring the same rows took 6.9 s with LOAD DATA LOCAL
fed from a pipe and 21.7 s with multi-row INSERTs of max_allowed_packet size.
LOAD DATA also takes rows larger than max_allowed_packet (two 256 MiB rows
loaded into a server limited to 16 MiB), so a huge value never has to be
split; the limit that does matter is InnoDB's redo log, which must be ten
times the largest row (see ``load``).

MariaDB and MySQL are told apart by ``@@version`` (and ``@@version_comment``).
MySQL 8 specifics:

- ``SHOW BINARY LOG STATUS`` replaces ``SHOW MASTER STATUS`` from 8.4 on
  (both are tried); the GTID position is ``@@gtid_executed`` (MariaDB:
  ``@@gtid_binlog_pos``).
- ``local_infile`` is OFF by default: restores need ``SET GLOBAL local_infile
  = ON`` on the server, and fail with a configuration error (78) saying so.
- JSON is a binary type: its text is loaded through a user variable and
  ``CONVERT(... USING utf8mb4)``, as binary-charset text is refused for it.
- Roles are locked accounts: ``SHOW CREATE USER`` covers them, there is no
  ``is_role`` column, and ``DEFAULT ROLE`` is part of ``SHOW CREATE USER``.
  Password hashes are read with ``print_identified_with_as_hex``.
- ``max_execution_time`` (milliseconds, SELECT only) stands in for MariaDB's
  ``max_statement_time`` when ``connection.statement_timeout`` is set.
- Sequences and packages exist only on MariaDB; the installer's accounts to
  leave alone are ``mysql.sys``, ``mysql.session`` and ``mysql.infoschema``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql

from dbbackup.backupset import TableRef
from dbbackup.engines.base import DatabaseDump, ServerInfo, Sink, Source
from dbbackup.engines.mysql import accounts
from dbbackup.engines.mysql.connection import (
    Flavor,
    MyEndpoint,
    closing,
    connect,
    describe_error,
    endpoint_from_settings,
    query,
    server_flavor,
    text,
)
from dbbackup.engines.mysql.dump import NON_TRANSACTIONAL_MODES, MyDump, ServerSnapshot
from dbbackup.engines.mysql.restore import MyRestore
from dbbackup.errors import ConfigError, ServiceUnavailableError

__all__ = ["SYSTEM_DATABASES", "MyEndpoint", "MySQLEngine", "endpoint_from_settings", "engine_from_settings"]

SYSTEM_DATABASES = frozenset({"mysql", "sys", "information_schema", "performance_schema"})


class MySQLEngine:
    name = "mysql"

    def __init__(
        self, endpoint: MyEndpoint, *, timeout: float = 0, jobs: int = 2, non_transactional: str = "warn"
    ) -> None:
        if non_transactional not in NON_TRANSACTIONAL_MODES:
            raise ConfigError(
                f"backup.non_transactional: {non_transactional!r} is not one of "
                + ", ".join(NON_TRANSACTIONAL_MODES)
            )
        self.endpoint = endpoint
        self.jobs = max(1, jobs)
        self.non_transactional = non_transactional
        self._deadline_at = time.monotonic() + timeout if timeout > 0 else None
        self._flavor: Flavor | None = None
        self._restorer = MyRestore(endpoint, self.flavor)
        self._server_snapshot: ServerSnapshot | None = None

    def flavor(self) -> Flavor:
        if self._flavor is None:
            with closing(connect(self.endpoint, context="reading the server version")) as conn:
                try:
                    self._flavor = server_flavor(conn)
                except pymysql.err.Error as exc:
                    raise describe_error(exc, "reading the server version", self.endpoint) from exc
        return self._flavor

    def server_info(self) -> ServerInfo:
        flavor = self.flavor()
        return ServerInfo(version=flavor.version, version_num=flavor.version_num, host=self.endpoint.display)

    @property
    def tools_major(self) -> int:
        """No client tools take part: everything goes through PyMySQL."""
        return 0

    def check_restore(self, source_version_num: int, tools_major: int) -> None:
        """Fail before the target is touched when the set comes from a newer server."""
        target = self.flavor()
        if source_version_num and source_version_num // 100 > target.version_num // 100:
            raise ServiceUnavailableError(
                f"the set comes from server version {_dotted(source_version_num)}, the target runs "
                f"{target.version}: definitions from a newer server may not load into an older one",
                hint="restore into a server of the same or a newer version",
            )

    def list_databases(self) -> list[str]:
        with closing(connect(self.endpoint, context="listing databases")) as conn:
            try:
                rows = query(conn, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME")
            except pymysql.err.Error as exc:
                raise describe_error(exc, "listing databases", self.endpoint) from exc
        names = [text(row[0]) for row in rows]
        return [name for name in names if name not in SYSTEM_DATABASES and not name.startswith("#")]

    def dump_globals(self, sink: Sink) -> None:
        flavor = self.flavor()
        with closing(connect(self.endpoint, context="dumping users and grants")) as conn:
            try:
                data = accounts.accounts_script(
                    conn, flavor, f"dbbackup: users and grants of {flavor.name} {flavor.version}"
                )
            except pymysql.err.Error as exc:
                raise describe_error(exc, "dumping users and grants", self.endpoint) from exc
        sink.write(data)

    def _dump_endpoint(self) -> MyEndpoint:
        """The endpoint with statements capped at the run's deadline, so the server ends them."""
        if self._deadline_at is None:
            return self.endpoint
        left = max(1.0, self._deadline_at - time.monotonic())
        limit = min(self.endpoint.statement_timeout or left, left)
        return dataclasses.replace(self.endpoint, statement_timeout=limit)

    def begin_backup(self, databases: list[str]) -> None:
        """Several databases: take one snapshot for all of them, as mysqldump
        --all-databases --single-transaction does, released by :meth:`close`."""
        if len(databases) < 2:
            return
        snapshot = ServerSnapshot(
            self._dump_endpoint(),
            self.flavor(),
            databases,
            jobs=self.jobs,
            non_transactional=self.non_transactional,
        )
        snapshot.open()
        self._server_snapshot = snapshot

    @contextlib.contextmanager
    def snapshot(self, database: str) -> Iterator[DatabaseDump]:
        dump = MyDump(
            self._dump_endpoint(),
            self.flavor(),
            database,
            jobs=self.jobs,
            non_transactional=self.non_transactional,
            shared=self._server_snapshot,
        )
        with dump.open() as result:
            yield result

    def database_exists(self, name: str) -> bool:
        return self._restorer.database_exists(name)

    def prepare_target(self, name: str, properties: dict[str, Any], *, clean: bool) -> None:
        self._restorer.prepare_target(name, properties, clean=clean)

    def restore_globals(self, script: bytes) -> list[str]:
        return self._restorer.restore_globals(script)

    def restore_ddl(self, target: str, section: str, source: Source, *, jobs: int = 1) -> None:
        self._restorer.restore_ddl(target, section, source)

    def restore_table(self, target: str, table: TableRef, source: Source, finish: Callable[[], None]) -> int:
        return self._restorer.restore_table(target, table, source, finish)

    def restore_sql(self, target: str, script: bytes) -> None:
        self._restorer.restore_sql(target, script)

    def close(self) -> None:
        """End a server-wide snapshot; report grants still waiting for their objects."""
        if self._server_snapshot is not None:
            self._server_snapshot.close()
            self._server_snapshot = None
        self._restorer.report_unapplied_grants()


def _dotted(version_num: int) -> str:
    return f"{version_num // 10000}.{version_num // 100 % 100}.{version_num % 100}"


def engine_from_settings(settings: Any, *, password: str | None, timeout: float) -> MySQLEngine:
    """The engine for ``settings`` (a dbbackup.config.Settings)."""
    home = os.environ.get("HOME")
    endpoint = endpoint_from_settings(
        settings.connection, password=password, home=Path(home) if home else None
    )
    return MySQLEngine(
        endpoint,
        timeout=timeout,
        jobs=int(settings.backup.jobs),
        non_transactional=settings.backup.non_transactional,
    )
