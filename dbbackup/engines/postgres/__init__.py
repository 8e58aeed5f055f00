"""The PostgreSQL engine: SQL and client tools, nothing of storage."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from dbbackup import execute
from dbbackup.backupset import TableRef
from dbbackup.engines.base import DatabaseDump, ServerInfo, Sink, Source
from dbbackup.engines.postgres.connection import (
    DEFAULT_SOCKET_DIR,
    PgEndpoint,
    child_env,
    connect,
    detect_pooler,
    direct_endpoint,
    find_client_bindir,
    pooler_error,
    tool_major,
    translated_errors,
)
from dbbackup.engines.postgres.dump import PgDump
from dbbackup.engines.postgres.restore import PgRestore
from dbbackup.errors import ServiceUnavailableError

log = logging.getLogger("dbbackup.postgres")

__all__ = ["PgEndpoint", "PostgresEngine", "direct_from_settings", "endpoint_from_settings"]


def direct_from_settings(connection: Any) -> tuple[str, int]:
    return (str(connection.direct_host), int(connection.direct_port))


def endpoint_from_settings(connection: Any, *, password: str | None, passfile: Path | None) -> PgEndpoint:
    return PgEndpoint(
        host=connection.host or DEFAULT_SOCKET_DIR,
        port=connection.port or 5432,
        user=connection.user,
        maintenance_db=connection.maintenance_db or "postgres",
        sslmode=connection.sslmode,
        connect_timeout=connection.connect_timeout,
        statement_timeout=connection.statement_timeout,
        lock_timeout=connection.lock_timeout,
        idle_timeout=connection.idle_timeout,
        stall_timeout=connection.stall_timeout,
        password=password,
        passfile=passfile,
    )


class PostgresEngine:
    name = "postgres"

    def __init__(
        self, endpoint: PgEndpoint, *, timeout: float, direct: tuple[str, int] | None = None
    ) -> None:
        self.endpoint = endpoint
        self._direct = direct if direct and (direct[0] or direct[1]) else None
        self.pooler: str | None = None
        self._deadline_at = time.monotonic() + timeout if timeout > 0 else float("inf")
        self._info: ServerInfo | None = None
        self._bindir: Path | None = None
        self._restore: PgRestore | None = None

    def remaining(self) -> float:
        """Seconds left before the run's deadline; children are killed at it."""
        left = self._deadline_at - time.monotonic()
        return max(1.0, min(left, 7 * 86400.0))

    def server_info(self) -> ServerInfo:
        """Connect once, refuse (or route around) a pooler, learn the version."""
        if self._info is None:
            with connect(self.endpoint, self.endpoint.maintenance_db) as conn:
                pooler = detect_pooler(self.endpoint, conn)
            if pooler is not None:
                self.pooler = pooler
                if self._direct is None:
                    raise pooler_error(self.endpoint, pooler)
                pooled = self.endpoint.display
                self.endpoint = direct_endpoint(self.endpoint, *self._direct)
                log.info(
                    "%s is %s; dumps and restores use the direct address %s",
                    pooled,
                    pooler,
                    self.endpoint.display,
                    extra={"event": "pooler_detected"},
                )
            with connect(self.endpoint, self.endpoint.maintenance_db) as conn:
                num = conn.info.server_version
                row = conn.execute("SELECT pg_catalog.version()").fetchone()
            self._info = ServerInfo(
                version=str(row[0]) if row else str(num),
                version_num=num,
                host=self.endpoint.display,
                pooler=self.pooler,
            )
        return self._info

    @property
    def tools_major(self) -> int:
        return tool_major(str(self.bindir / "pg_dump"))

    def check_restore(self, source_version_num: int, tools_major: int) -> None:
        """Fail before the target is touched when this server cannot take the set."""
        target = self.server_info().version_num
        if source_version_num and target // 10000 < source_version_num // 10000:
            raise ServiceUnavailableError(
                f"the set comes from PostgreSQL {source_version_num // 10000}, the target server runs "
                f"{target // 10000}: a dump cannot be restored into an older major version",
                hint=f"restore into PostgreSQL {source_version_num // 10000} or newer",
            )
        if tools_major and tool_major(str(self.bindir / "pg_restore")) < tools_major:
            self._bindir = find_client_bindir(tools_major)

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_client_bindir(self.server_info().version_num // 10000)
        return self._bindir

    def list_databases(self) -> list[str]:
        with (
            translated_errors("listing databases"),
            connect(self.endpoint, self.endpoint.maintenance_db) as conn,
        ):
            rows = conn.execute(
                "SELECT datname FROM pg_catalog.pg_database "
                "WHERE datallowconn AND NOT datistemplate ORDER BY datname"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def begin_backup(self, databases: list[str]) -> None:
        """Nothing to share: a PostgreSQL snapshot cannot span databases, so each
        database gets its own (as with pg_dumpall)."""

    def dump_globals(self, sink: Sink) -> None:
        argv = [
            str(self.bindir / "pg_dumpall"),
            "--globals-only",
            "--no-password",
            f"--database={self.endpoint.maintenance_db}",
        ]
        env = execute.child_environment(child_env(self.endpoint, self.endpoint.maintenance_db))
        with execute.Child(argv, env=env, deadline=self.remaining(), label="pg_dumpall") as child:
            while chunk := child.stdout.read(1 << 20):
                sink.write(chunk)
            child.check(context="dumping roles and tablespaces")

    @contextlib.contextmanager
    def snapshot(self, database: str) -> Iterator[DatabaseDump]:
        with (
            translated_errors(f"dumping {database}"),
            PgDump(self.endpoint, self.bindir, database, deadline=self.remaining).open() as dump,
        ):
            yield dump

    def _restorer(self) -> PgRestore:
        # Made once the endpoint is settled (after pooler detection), then reused.
        if self._restore is None:
            self._restore = PgRestore(self.endpoint, self.bindir, deadline=self.remaining)
        return self._restore

    def database_exists(self, name: str) -> bool:
        with translated_errors(f"checking database {name}"):
            return self._restorer().database_exists(name)

    def prepare_target(self, name: str, properties: dict[str, Any], *, clean: bool) -> None:
        with translated_errors(f"preparing database {name}"):
            self._restorer().prepare_target(name, properties, clean=clean)

    def restore_globals(self, script: bytes) -> list[str]:
        with translated_errors("restoring roles and tablespaces"):
            return self._restorer().restore_globals(script)

    def restore_ddl(self, target: str, section: str, source: Source, *, jobs: int = 1) -> None:
        self._restorer().restore_archive(target, section, source, jobs=jobs)

    def restore_table(self, target: str, table: TableRef, source: Source, finish: Callable[[], None]) -> int:
        return self._restorer().restore_table(target, table, source, finish)

    def restore_sql(self, target: str, script: bytes) -> None:
        self._restorer().restore_sql(target, script)

    def close(self) -> None:
        """Close the restore sessions kept between tables."""
        if self._restore is not None:
            self._restore.close()
            self._restore = None


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.OperationalError)
