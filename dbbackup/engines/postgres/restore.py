"""Restoring into PostgreSQL: target database, schema sections, table data.

Table data is loaded with COPY inside a transaction that commits only after
the object's checksum has been proven, so corrupt bytes never land.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from dbbackup import execute, fsutil
from dbbackup.backupset import TableRef
from dbbackup.engines.base import Source, iter_chunks
from dbbackup.engines.postgres.connection import (
    PgEndpoint,
    child_env,
    connect,
    cut_connection,
    stall_error,
)
from dbbackup.engines.postgres.dump import STABLE_OUTPUT_SETTINGS, copy_statement
from dbbackup.errors import (
    CannotCreateError,
    DataError,
    DbBackupError,
    IOFailure,
    ServiceUnavailableError,
)
from dbbackup.stall import StallGuard

log = logging.getLogger("dbbackup.postgres")

# Settings whose value is a list of names (pg_dump quotes each element).
LIST_SETTINGS = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "shared_preload_libraries",
    "local_preload_libraries",
    "unix_socket_directories",
}

# COPY FROM reads dates and intervals as COPY TO wrote them; durability waits for the end.
RESTORE_SETTINGS = ("SET synchronous_commit = off", *STABLE_OUTPUT_SETTINGS[1:])

DATABASE_PRIVILEGES = frozenset({"CREATE", "CONNECT", "TEMPORARY"})

NON_EMPTY_SQL = """
SELECT
  (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_')
+ (SELECT count(*) FROM pg_catalog.pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'public') AND n.nspname !~ '^pg_')
+ (SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
+ (SELECT count(*) FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql')
"""


def keep_password_of(script: bytes, role: str, quoted: str) -> bytes:
    """Drop the PASSWORD clause from pg_dumpall's ``ALTER ROLE`` line for ``role``
    (``quoted`` is its name as an SQL identifier, as pg_dumpall writes it)."""
    if not role:
        return script
    heads = {f"ALTER ROLE {quoted} WITH ".encode(), f"ALTER ROLE {role} WITH ".encode()}
    lines = script.split(b"\n")
    for index, line in enumerate(lines):
        if any(line.startswith(head) for head in heads):
            lines[index] = re.sub(rb" PASSWORD '(?:[^']|'')*'", b"", line)
    return b"\n".join(lines)


def split_guc_list(value: str) -> list[str]:
    """Split a stored list setting (``"$user", public``) into plain names."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    index = 0
    while index < len(value):
        char = value[index]
        if char == '"':
            if quoted and index + 1 < len(value) and value[index + 1] == '"':
                current.append('"')
                index += 1
            else:
                quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        index += 1
    items.append("".join(current).strip())
    return [item for item in items if item]


def setting_clause(assignment: str) -> sql.Composed:
    name, _, value = assignment.partition("=")
    if name.lower() in LIST_SETTINGS:
        values = sql.SQL(", ").join(sql.Literal(v) for v in split_guc_list(value))
    else:
        values = sql.SQL("{}").format(sql.Literal(value))
    return sql.SQL("SET {} = {}").format(sql.Identifier(name), values)


class PgRestore:
    def __init__(self, endpoint: PgEndpoint, bindir: Path, *, deadline: Callable[[], float]) -> None:
        self.endpoint = endpoint
        self.bindir = bindir
        self.deadline = deadline
        # One session per (loading thread, target), reused table after table.
        self._sessions: dict[tuple[int, str], psycopg.Connection[Any]] = {}
        self._sessions_lock = threading.Lock()

    def _admin(self) -> psycopg.Connection[Any]:
        return connect(self.endpoint, self.endpoint.maintenance_db)

    def database_exists(self, name: str) -> bool:
        with self._admin() as conn:
            row = conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def database_is_empty(self, name: str) -> bool:
        with connect(self.endpoint, name) as conn:
            row = conn.execute(NON_EMPTY_SQL).fetchone()
        return row is not None and int(row[0]) == 0

    def role_exists(self, conn: psycopg.Connection[Any], role: str) -> bool:
        return (
            conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone()
            is not None
        )

    def _admin_avoiding(self, name: str) -> psycopg.Connection[Any]:
        # A database cannot be dropped or altered from a session connected to it.
        dbname = "template1" if name == self.endpoint.maintenance_db else self.endpoint.maintenance_db
        return connect(self.endpoint, dbname)

    def prepare_target(self, name: str, properties: dict[str, Any], *, clean: bool) -> None:
        """Create the target; an existing one is reused if empty, recreated with ``clean``."""
        exists = self.database_exists(name)
        if exists and not clean:
            if not self.database_is_empty(name):
                raise CannotCreateError(
                    f"database {name!r} already exists and is not empty",
                    hint="restore into a new name with --target-db NAME, or pass --clean to drop "
                    "and recreate it",
                )
            with self._admin_avoiding(name) as conn:
                self._apply_database_properties(conn, name, properties)
            return
        with self._admin_avoiding(name) as conn:
            if exists:
                log.info("dropping database %s before restoring it (--clean)", name)
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            if properties.get("encoding"):
                create += sql.SQL(" ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                    sql.Literal(properties["encoding"]),
                    sql.Literal(properties["collate"]),
                    sql.Literal(properties["ctype"]),
                )
            owner = properties.get("owner")
            if owner and self.role_exists(conn, owner):
                create += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
            conn.execute(create)
            self._apply_database_properties(conn, name, properties)

    def _apply_database_properties(
        self, conn: psycopg.Connection[Any], name: str, properties: dict[str, Any]
    ) -> None:
        target = sql.Identifier(name)
        for assignment in properties.get("settings", []):
            conn.execute(sql.SQL("ALTER DATABASE {} ").format(target) + setting_clause(assignment))
        for entry in properties.get("role_settings", []):
            if not self.role_exists(conn, entry["role"]):
                log.warning("role %s does not exist; skipping its settings in %s", entry["role"], name)
                continue
            for assignment in entry["settings"]:
                conn.execute(
                    sql.SQL("ALTER ROLE {} IN DATABASE {} ").format(sql.Identifier(entry["role"]), target)
                    + setting_clause(assignment)
                )
        limit = properties.get("connection_limit")
        if isinstance(limit, int) and limit >= 0:
            conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(target, sql.Literal(limit)))
        acl = properties.get("acl")
        if acl is not None:
            self._apply_database_acl(conn, name, acl, owner=properties.get("owner"))
        if properties.get("comment"):
            conn.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(target, sql.Literal(properties["comment"]))
            )

    def _apply_database_acl(
        self, conn: psycopg.Connection[Any], name: str, acl: list[dict[str, Any]], *, owner: str | None
    ) -> None:
        """Replace the default privileges with exactly the recorded ones."""
        target = sql.Identifier(name)
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target))
        current_owner = conn.execute(
            "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        if current_owner:
            conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                    target, sql.Identifier(str(current_owner[0]))
                )
            )
        for item in acl:
            if item["privilege"] not in DATABASE_PRIVILEGES:
                raise DataError(f"the set records an unknown database privilege {item['privilege']!r}")
            grantee = item["grantee"]
            if grantee and not self.role_exists(conn, grantee):
                log.warning(
                    "role %s does not exist; not granting it %s on %s", grantee, item["privilege"], name
                )
                continue
            who = sql.SQL("PUBLIC") if not grantee else sql.Identifier(grantee)
            statement = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(item["privilege"]), target, who
            )
            if item.get("grantable"):
                statement += sql.SQL(" WITH GRANT OPTION")
            conn.execute(statement)

    def restore_globals(self, script: bytes) -> list[str]:
        """Run the roles/tablespaces script; return errors other than "already exists".

        The role dbbackup is connected as keeps its password: taking the old
        server's one would lock this very restore (and its admin) out.
        """
        with self._admin_avoiding("") as conn:
            row = conn.execute("SELECT current_user, pg_catalog.quote_ident(current_user)").fetchone()
        if row:
            script = keep_password_of(script, str(row[0]), str(row[1]))
        argv = [
            str(self.bindir / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--no-password",
            "--set=ON_ERROR_STOP=0",
            "--file=-",
        ]
        env = execute.child_environment(child_env(self.endpoint, self.endpoint.maintenance_db))
        _out, err = execute.run_capture(
            argv, env=env, timeout=self.deadline(), context="restoring roles", input_bytes=script
        )
        problems = []
        for line in err.decode("utf-8", "replace").splitlines():
            if "ERROR:" in line and "already exists" not in line:
                problems.append(line.strip())
        return problems

    def restore_archive(self, target: str, section: str, source: Source, *, jobs: int = 1) -> None:
        """Feed a pg_dump custom-format section to pg_restore in one transaction.

        With ``jobs > 1`` (post-data: index builds) pg_restore needs a seekable
        file, so the small section is staged in a private 0600 file first.
        """
        if jobs > 1:
            self._restore_archive_parallel(target, section, source, jobs)
            return
        argv = [
            str(self.bindir / "pg_restore"),
            "--no-password",
            "--exit-on-error",
            "--single-transaction",
            # Empty: libpq takes the name from PGDATABASE, so no name is ever parsed from argv.
            "--dbname=",
        ]
        env = execute.child_environment(child_env(self.endpoint, target))
        context = f"restoring {section} of {target}"
        with execute.Child(
            argv,
            env=env,
            deadline=self.deadline(),
            stdin=execute.PIPE,
            stdout=execute.DEVNULL,
            label="pg_restore",
        ) as child:
            try:
                for chunk in iter_chunks(source):
                    child.stdin.write(chunk)
                child.stdin.close()
            except BrokenPipeError:
                child.check(context=context)
                raise IOFailure(f"{context}: pg_restore stopped reading its input") from None
            except BaseException:
                child.kill()
                raise
            child.check(timeout=self.deadline(), context=context)

    def _restore_archive_parallel(self, target: str, section: str, source: Source, jobs: int) -> None:
        with fsutil.private_workdir("pg_restore") as workdir:
            staged = workdir / f"{section}.pgdump"
            with fsutil.open_private_file(staged) as handle:
                for chunk in iter_chunks(source):
                    handle.write(chunk)
            argv = [
                str(self.bindir / "pg_restore"),
                "--no-password",
                "--exit-on-error",
                f"--jobs={jobs}",
                # Empty: libpq takes the name from PGDATABASE, so no name is ever parsed from argv.
                "--dbname=",
                str(staged),
            ]
            env = execute.child_environment(child_env(self.endpoint, target))
            with execute.Child(
                argv, env=env, deadline=self.deadline(), stdout=execute.DEVNULL, label="pg_restore"
            ) as child:
                child.check(timeout=self.deadline(), context=f"restoring {section} of {target}")

    def _session(self, target: str) -> psycopg.Connection[Any]:
        key = (threading.get_ident(), target)
        conn = self._sessions.get(key)
        if conn is not None and not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            return conn
        conn = connect(self.endpoint, target, autocommit=False)
        for setting in RESTORE_SETTINGS:
            conn.execute(setting)
        conn.execute(
            "SELECT pg_catalog.set_config('client_encoding',"
            " pg_catalog.pg_encoding_to_char(encoding), false)"
            " FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()"
        )
        conn.commit()  # plain SETs outlive the transaction they ran in
        with self._sessions_lock:
            self._sessions[key] = conn
        return conn

    def _discard_session(self, target: str) -> None:
        with self._sessions_lock:
            conn = self._sessions.pop((threading.get_ident(), target), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for conn in sessions:
            conn.close()

    def restore_table(self, target: str, table: TableRef, source: Source, finish: Callable[[], None]) -> int:
        """COPY one table's rows in; commit only after ``finish`` proved the checksum.

        In-process, on a session the loading thread reuses: 1 MiB COPY messages
        are as fast as psql, without a process and a login per table.
        """
        statement = copy_statement(table, "FROM STDIN")
        written = 0
        conn = self._session(target)
        guard = StallGuard(
            self.endpoint.stall_timeout,
            lambda: cut_connection(conn),
            what=f"{target}: COPY into {table.schema}.{table.name}",
        )
        try:
            with guard, conn.cursor() as cur, cur.copy(statement) as copy:
                for chunk in iter_chunks(source):
                    copy.write(chunk)
                    guard.touch()
                    written += len(chunk)
                finish()
            conn.commit()
        except psycopg.Error as exc:
            self._discard_session(target)
            if guard.stalled:
                raise stall_error(guard.what, guard.timeout) from exc
            raise table_load_error(target, table, exc) from exc
        except BaseException:
            # A failed checksum or a stop: the transaction dies with its session, uncommitted.
            self._discard_session(target)
            raise
        return written

    def restore_sql(self, target: str, script: bytes) -> None:
        if not script.strip():
            return
        with connect(self.endpoint, target, autocommit=False) as conn:
            try:
                conn.execute(script.decode("utf-8"))
                conn.commit()
            except psycopg.Error as exc:
                raise IOFailure(f"{target}: restoring SQL failed: {str(exc).strip()}") from exc


def table_load_error(target: str, table: TableRef, exc: psycopg.Error) -> DbBackupError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    where = f"{target}: table {table.schema}.{table.name}"
    if isinstance(exc, psycopg.OperationalError):
        return ServiceUnavailableError(f"{where}: the connection failed during COPY: {text}")
    if isinstance(exc, psycopg.errors.DataException | psycopg.errors.BadCopyFileFormat):
        return DataError(f"{where}: the stored rows were rejected: {text}")
    return IOFailure(f"{where}: loading rows failed: {text}")
