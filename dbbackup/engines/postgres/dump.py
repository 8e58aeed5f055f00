"""Dumping one PostgreSQL database from one exported snapshot.

The schema comes from pg_dump in two sections (pre-data, post-data), table
contents from COPY in parallel sessions that all import the same snapshot,
so a restore can run schemas -> data (one job per table) -> indexes and
constraints, and nothing is ever staged in a temporary file.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dbbackup import execute
from dbbackup.backupset import TableRef
from dbbackup.engines.base import DatabaseDump, DumpTask, Sink
from dbbackup.engines.postgres.connection import (
    PgEndpoint,
    child_env,
    connect,
    stall_error,
)
from dbbackup.errors import DataError, DbBackupError
from dbbackup.stall import StallGuard

log = logging.getLogger("dbbackup.postgres")

COPY_BATCH = 1 << 20

# Tables pg_dump would dump: ordinary tables (leaf partitions included),
# outside system schemas and not owned by an extension.
TABLES_SQL = """
SELECT n.nspname, c.relname, pg_catalog.pg_total_relation_size(c.oid),
       ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = ''
             ORDER BY a.attnum)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass
                    AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 3 DESC, 1, 2
"""

SEQUENCES_SQL = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass
                    AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

DATABASE_SQL = """
SELECT pg_catalog.pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
       pg_catalog.pg_get_userbyid(d.datdba), d.datconnlimit,
       ARRAY(SELECT pg_catalog.array_to_string(s.setconfig, E'\\n') FROM pg_catalog.pg_db_role_setting s
             WHERE s.setdatabase = d.oid AND s.setrole = 0),
       ARRAY(SELECT pg_catalog.pg_get_userbyid(s.setrole) || E'\\t' ||
                    pg_catalog.array_to_string(s.setconfig, E'\\n')
             FROM pg_catalog.pg_db_role_setting s
             WHERE s.setdatabase = d.oid AND s.setrole <> 0),
       pg_catalog.shobj_description(d.oid, 'pg_database'),
       d.datacl IS NULL,
       ARRAY(SELECT CASE WHEN a.grantee = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(a.grantee) END
                    || E'\t' || a.privilege_type || E'\t' || a.is_grantable::text
             FROM pg_catalog.aclexplode(d.datacl)
                  WITH ORDINALITY a(grantor, grantee, privilege_type, is_grantable, n)
             ORDER BY a.n)
FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
"""


def qualified(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


class PgDump:
    """The tasks of one database's dump, all reading one snapshot."""

    def __init__(
        self,
        endpoint: PgEndpoint,
        bindir: Path,
        database: str,
        *,
        deadline: Callable[[], float],
    ) -> None:
        self.endpoint = endpoint
        self.bindir = bindir
        self.database = database
        self.deadline = deadline
        self.snapshot_id = ""
        self.encoding = "UTF8"

    @contextlib.contextmanager
    def open(self) -> Iterator[DatabaseDump]:
        control = connect(self.endpoint, self.database, autocommit=False)
        try:
            # The exporting transaction must stay open (and idle) for the whole dump.
            control.execute("SET idle_in_transaction_session_timeout = 0")
            control.commit()
            control.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            control.execute("SET row_security = off")
            row = control.execute(
                "SELECT pg_catalog.pg_export_snapshot(), "
                "CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() "
                "ELSE pg_catalog.pg_current_wal_lsn() END::text, "
                "pg_catalog.pg_current_snapshot()::text"
            ).fetchone()
            assert row is not None
            self.snapshot_id = str(row[0])
            consistency = {"snapshot": str(row[2]), "lsn": str(row[1])}
            properties = self._properties(control)
            tables = control.execute(TABLES_SQL).fetchall()
            sequences = control.execute(SEQUENCES_SQL).fetchall()
            # Like pg_dump: hold ACCESS SHARE locks so no table is dropped or
            # rewritten under the parallel COPY sessions.
            for start in range(0, len(tables), 500):
                batch = tables[start : start + 500]
                control.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                        sql.SQL(", ").join(qualified(str(t[0]), str(t[1])) for t in batch)
                    )
                )
            lo_row = control.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata)"
            ).fetchone()
            has_large_objects = bool(lo_row and lo_row[0])
            dump = DatabaseDump(name=self.database, properties=properties, consistency=consistency)
            dump.first.append(
                DumpTask("pre-data.pgdump", "pre-data", self._pg_dump_task(["--section=pre-data"]))
            )
            for index, (schema, name, size, columns) in enumerate(tables, start=1):
                table = TableRef(schema=str(schema), name=str(name), columns=[str(c) for c in columns])
                copy_sql = copy_statement(table).as_string(control)
                dump.parallel.append(
                    DumpTask(
                        f"data/{index:05d}.copy",
                        "table-data",
                        self._copy_task(table, copy_sql),
                        table=table,
                        size_hint=int(size),
                    )
                )
            dump.parallel.append(
                DumpTask("sequences.sql", "sequences", self._sequences_task(control, sequences))
            )
            if has_large_objects:
                dump.parallel.append(
                    DumpTask(
                        "large-objects.pgdump",
                        "large-objects",
                        self._pg_dump_task(["--section=data", "--exclude-table-data=*.*"]),
                    )
                )
            dump.parallel.append(
                DumpTask("post-data.pgdump", "post-data", self._pg_dump_task(["--section=post-data"]))
            )
            yield dump
        finally:
            # Closing ends the read-only transaction server-side; an explicit
            # ROLLBACK could block on a peer that stopped answering.
            control.close()

    def _properties(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        row = conn.execute(DATABASE_SQL).fetchone()
        assert row is not None
        encoding, collate, ctype, owner, connlimit, db_settings, role_settings, comment, default_acl, acl = (
            row
        )
        self.encoding = str(encoding)
        return {
            "encoding": encoding,
            "collate": collate,
            "ctype": ctype,
            "owner": owner,
            "connection_limit": connlimit,
            "settings": [line for block in db_settings for line in str(block).split("\n") if line],
            "role_settings": [
                {"role": entry.split("\t", 1)[0], "settings": entry.split("\t", 1)[1].split("\n")}
                for entry in role_settings
            ],
            "comment": comment,
            # None: the built-in default (owner all, PUBLIC connect and temporary).
            "acl": None
            if default_acl
            else [
                {"grantee": g, "privilege": p, "grantable": w == "true"}
                for g, p, w in (entry.split("\t") for entry in acl)
            ],
        }

    def _stream(self, child: execute.Child, sink: Sink, what: str) -> execute.ChildFailure | None:
        """Copy a child's stdout into ``sink``; a stream that stops moving is cut (69)."""
        guard = StallGuard(self.endpoint.stall_timeout, child.kill, what=what)
        try:
            with guard:
                while chunk := child.stdout.read1(COPY_BATCH):
                    guard.touch()
                    sink.write(chunk)
        except BaseException:
            child.kill()
            raise
        failure = child.wait()
        if guard.stalled:
            raise stall_error(what, guard.timeout)
        return failure

    def _pg_dump_task(self, extra: list[str]) -> Callable[[Sink], None]:
        def run(sink: Sink) -> None:
            argv = [
                str(self.bindir / "pg_dump"),
                "--format=custom",
                "--compress=0",
                "--no-password",
                f"--snapshot={self.snapshot_id}",
                f"--lock-wait-timeout={int(self.endpoint.lock_timeout * 1000) or 1}",
                *extra,
            ]
            env = execute.child_environment(child_env(self.endpoint, self.database))
            what = f"pg_dump of {self.database}"
            with execute.Child(argv, env=env, deadline=self.deadline(), label="pg_dump") as child:
                failure = self._stream(child, sink, what)
            if failure is not None:
                raise execute.failure_to_error("pg_dump", failure, f"dumping {self.database}")

        return run

    def _copy_task(self, table: TableRef, copy_sql: str) -> Callable[[Sink], None]:
        """COPY one table through psql, inside the exported snapshot.

        psql streams COPY data in C with large writes; reading it in 1 MiB
        pieces keeps this process's memory flat even for a row of hundreds of MB.
        """

        def run(sink: Sink) -> None:
            argv = [
                str(self.bindir / "psql"),
                "--no-psqlrc",
                "--quiet",
                "--no-password",
                "--set=ON_ERROR_STOP=1",
                "--command=BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                f"--command=SET TRANSACTION SNAPSHOT '{self.snapshot_id}'",
                *(f"--command={statement}" for statement in STABLE_OUTPUT_SETTINGS),
                f"--command={copy_sql}",
                "--command=COMMIT",
            ]
            env = execute.child_environment(
                {**child_env(self.endpoint, self.database), "PGCLIENTENCODING": self.encoding}
            )
            what = f"{self.database}: COPY of {table.schema}.{table.name}"
            with execute.Child(argv, env=env, deadline=self.deadline(), label="psql") as child:
                failure = self._stream(child, sink, what)
            if failure is not None:
                raise copy_failure(self.database, table, failure)

        return run

    def _sequences_task(
        self, control: psycopg.Connection[Any], sequences: list[Any]
    ) -> Callable[[Sink], None]:
        # Read now, inside the snapshot, while the control session is ours alone.
        lines = []
        for schema, name in sequences:
            row = control.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(qualified(str(schema), str(name)))
            ).fetchone()
            assert row is not None
            target = qualified(str(schema), str(name)).as_string(control)
            lines.append(
                sql.SQL("SELECT pg_catalog.setval({}, {}, {});")
                .format(sql.Literal(target), sql.Literal(row[0]), sql.Literal(row[1]))
                .as_string(control)
            )
        script = ("\n".join(lines) + "\n").encode() if lines else b""

        def run(sink: Sink) -> None:
            sink.write(script)

        return run


# What COPY's text depends on, pinned as pg_dump pins it, so no role or database
# default (DateStyle DMY, extra_float_digits 0) changes a value on its way out.
STABLE_OUTPUT_SETTINGS = (
    "SET row_security = off",
    "SET DateStyle = ISO",
    "SET IntervalStyle = postgres",
    "SET extra_float_digits = 3",
)


def copy_statement(table: TableRef, direction: str = "TO STDOUT") -> sql.Composed:
    """``COPY table (columns) TO STDOUT`` (or ``FROM STDIN``), columns in dump order."""
    if not table.columns:
        return sql.SQL("COPY {} " + direction).format(qualified(table.schema, table.name))
    return sql.SQL("COPY {} ({}) " + direction).format(
        qualified(table.schema, table.name),
        sql.SQL(", ").join(sql.Identifier(c) for c in table.columns),
    )


def copy_failure(database: str, table: TableRef, failure: execute.ChildFailure) -> DbBackupError:
    where = f"{database}: table {table.schema}.{table.name}"
    lines = [line for line in failure.stderr_tail.splitlines() if line.strip()]
    text = next((line for line in lines if "ERROR" in line or "FATAL" in line), lines[-1] if lines else "")
    text = text.removeprefix("psql:").strip()
    if any(marker in text.lower() for marker in TOO_BIG_MARKERS):
        return DataError(
            f"{where}: PostgreSQL cannot export a row of this table ({text})",
            hint="a value is too large for COPY (its text form exceeds 1 GB); "
            "store it in a large object or split it, then back up again",
        )
    return execute.failure_to_error("psql", failure, f"{where}: COPY failed")


TOO_BIG_MARKERS = ("out of memory", "cannot enlarge string buffer", "invalid memory alloc request size")
