"""Dumping one database from one consistent snapshot, table by table in parallel.

A control session takes ``FLUSH TABLES WITH READ LOCK``; while writes are
held, it and ``jobs`` worker sessions each start ``START TRANSACTION WITH
CONSISTENT SNAPSHOT``, the binlog coordinates and GTID position are read, the
object list is read and every table's metadata lock is taken; then
``UNLOCK TABLES``. All sessions now see the same moment, whichever worker
dumps which table. Tables of non-transactional engines (MyISAM, Aria, ...)
have no snapshot: by default they are read after the lock is gone, with a
warning; with ``non_transactional = "lock"`` they are dumped first, one after
the other, and the lock is held until the last of them is done.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pymysql
import pymysql.cursors

from dbbackup.backupset import TableRef
from dbbackup.engines.base import DatabaseDump, DumpTask, Sink
from dbbackup.engines.mysql import schema, tsv
from dbbackup.engines.mysql.connection import (
    Flavor,
    MyConnection,
    MyEndpoint,
    closing,
    connect,
    describe_error,
    execute,
    query,
    text,
)
from dbbackup.engines.mysql.schema import TableInfo
from dbbackup.errors import DataError, DbBackupError, IOFailure, PermissionDeniedError

log = logging.getLogger("dbbackup.mysql")

WRITE_CHUNK = 1 << 20
FETCH_ROWS = 1000
NON_TRANSACTIONAL_MODES = ("warn", "lock")


def _snapshot_session(conn: MyConnection, endpoint: MyEndpoint, flavor: Flavor) -> None:
    # REPEATABLE READ: under READ COMMITTED a "consistent snapshot" is not kept.
    settings = [
        "SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SESSION sql_mode = ''",
        "SESSION sql_quote_show_create = 1",
    ]
    if endpoint.statement_timeout > 0:
        if flavor.mariadb:
            settings.append(f"SESSION max_statement_time = {endpoint.statement_timeout:.3f}")
        else:
            settings.append(f"SESSION max_execution_time = {int(endpoint.statement_timeout * 1000)}")
    for setting in settings:
        execute(conn, f"SET {setting}")


def binlog_position(conn: MyConnection, flavor: Flavor) -> dict[str, Any]:
    """Binlog file, position and GTID set; read while writes are held."""
    rows: list[tuple[Any, ...]] = []
    for statement in ("SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"):
        try:
            rows = query(conn, statement)
            break
        except pymysql.err.ProgrammingError:
            continue  # MySQL 8.4 renamed the statement
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in (1227, 1142):
                log.warning("cannot read the binlog position (%s); it is not recorded", exc.args[1])
                break
            raise
    gtid_variable = "@@gtid_binlog_pos" if flavor.mariadb else "@@gtid_executed"
    gtid = text(query(conn, f"SELECT {gtid_variable}")[0][0])
    position: dict[str, Any] = {"binlog_file": None, "binlog_position": None, "gtid": gtid}
    if rows:
        position["binlog_file"] = text(rows[0][0])
        position["binlog_position"] = int(rows[0][1])
    return position


class _ReadLock:
    """The global read lock of the control session, released once."""

    def __init__(self, control: MyConnection, pending: int) -> None:
        self._control = control
        self.pending = pending
        self._mutex = threading.Lock()
        self.held = True

    def task_done(self) -> None:
        with self._mutex:
            self.pending -= 1
            if self.pending <= 0:
                self.release()

    def release(self) -> None:
        if self.held:
            self.held = False
            execute(self._control, "UNLOCK TABLES")


class ServerSnapshot:
    """One consistent moment for several databases (``backup --all``).

    One brief global read lock starts the control and worker transactions for
    the whole server, takes metadata locks on every table of every database and
    reads one binlog position; each database's dump then borrows these sessions,
    so all databases of the set come from the same point in the binlog.
    """

    def __init__(
        self,
        endpoint: MyEndpoint,
        flavor: Flavor,
        databases: Sequence[str],
        *,
        jobs: int,
        non_transactional: str,
    ) -> None:
        self.endpoint = endpoint
        self.flavor = flavor
        self.databases = list(databases)
        self.jobs = max(1, jobs)
        self.non_transactional = non_transactional
        self.objects: dict[str, list[TableInfo]] = {}
        self.consistency: dict[str, Any] = {}
        self.control: MyConnection | None = None
        self.workers: list[MyConnection] = []
        self.lock: _ReadLock | None = None
        self.holding = False
        self._stack = contextlib.ExitStack()

    def open(self) -> None:
        context = "taking the server-wide snapshot"
        try:
            self.control = self._stack.enter_context(closing(self._connect(context)))
            self.workers = [
                self._stack.enter_context(closing(self._connect(context))) for _ in range(self.jobs)
            ]
            take_read_lock(self.control, context)
            self.lock = _ReadLock(self.control, 0)
            try:
                for conn in [*self.workers, self.control]:
                    execute(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                self.consistency = {
                    "method": "flush-tables-with-read-lock",
                    "scope": "server",
                    **binlog_position(self.control, self.flavor),
                }
                for database in self.databases:
                    self.objects[database] = schema.list_objects(self.control, database)
                    schema.lock_definitions(self.control, database, self.objects[database])
            except BaseException:
                with contextlib.suppress(pymysql.err.Error):
                    self.lock.release()
                raise
        except pymysql.err.Error as exc:
            self.close()
            raise describe_error(exc, context, self.endpoint) from exc
        except BaseException:
            self.close()
            raise
        loose = sum(
            1 for tables in self.objects.values() for t in tables if t.has_data and not t.transactional
        )
        self.holding = self.non_transactional == "lock" and loose > 0
        if self.holding:
            self.lock.pending = loose
        else:
            self.lock.release()

    def _connect(self, context: str) -> MyConnection:
        conn = connect(self.endpoint, context=context)
        try:
            _snapshot_session(conn, self.endpoint, self.flavor)
        except pymysql.err.Error as exc:
            conn.close()
            raise describe_error(exc, context, self.endpoint) from exc
        return conn

    def close(self) -> None:
        self._stack.close()


def take_read_lock(control: MyConnection, context: str) -> None:
    try:
        execute(control, "FLUSH TABLES WITH READ LOCK")
    except pymysql.err.OperationalError as exc:
        if exc.args and exc.args[0] in (1227, 1142, 1044):
            raise PermissionDeniedError(
                f"{context}: FLUSH TABLES WITH READ LOCK was refused: {exc.args[1]}",
                hint="a consistent parallel dump needs the RELOAD privilege: "
                "GRANT RELOAD ON *.* TO the backup account",
            ) from exc
        raise


class MyDump:
    """The tasks of one database's dump, all reading one snapshot (its own, or the server's)."""

    def __init__(
        self,
        endpoint: MyEndpoint,
        flavor: Flavor,
        database: str,
        *,
        jobs: int,
        non_transactional: str,
        shared: ServerSnapshot | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.flavor = flavor
        self.database = database
        self.jobs = max(1, jobs)
        self.non_transactional = non_transactional
        self.shared = shared
        self._pool: queue.Queue[MyConnection | None] = queue.Queue()

    def _connect(self) -> MyConnection:
        conn = connect(self.endpoint, self.database, context=f"dumping {self.database}")
        try:
            _snapshot_session(conn, self.endpoint, self.flavor)
        except pymysql.err.Error as exc:
            conn.close()
            raise describe_error(exc, f"dumping {self.database}", self.endpoint) from exc
        return conn

    @contextlib.contextmanager
    def open(self) -> Iterator[DatabaseDump]:
        if self.shared is not None:
            yield self._borrow(self.shared)
            return
        with contextlib.ExitStack() as stack:
            control = stack.enter_context(closing(self._connect()))
            workers = [stack.enter_context(closing(self._connect())) for _ in range(self.jobs)]
            try:
                dump = self._prepare(control, workers)
            except pymysql.err.Error as exc:
                raise describe_error(exc, f"dumping {self.database}", self.endpoint) from exc
            for worker in workers:
                self._pool.put(worker)
            yield dump

    def _borrow(self, shared: ServerSnapshot) -> DatabaseDump:
        """This database's tasks on the server-wide snapshot's sessions."""
        assert shared.control is not None and shared.lock is not None
        for worker in shared.workers:
            self._pool.put(worker)
        try:
            return self._tasks(
                shared.control,
                dict(shared.consistency),
                shared.objects[self.database],
                shared.lock,
                holding=shared.holding,
            )
        except pymysql.err.Error as exc:
            raise describe_error(exc, f"dumping {self.database}", self.endpoint) from exc

    def _take_snapshot(
        self, control: MyConnection, workers: Sequence[MyConnection]
    ) -> tuple[dict[str, Any], list[TableInfo], _ReadLock]:
        take_read_lock(control, f"dumping {self.database}")
        objects = []
        lock = _ReadLock(control, 0)
        try:
            for conn in [*workers, control]:
                execute(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            consistency = {"method": "flush-tables-with-read-lock", **binlog_position(control, self.flavor)}
            objects = schema.list_objects(control, self.database)
            schema.lock_definitions(control, self.database, objects)
        except BaseException:
            with contextlib.suppress(pymysql.err.Error):
                lock.release()
            raise
        return consistency, objects, lock

    def _prepare(self, control: MyConnection, workers: Sequence[MyConnection]) -> DatabaseDump:
        consistency, objects, lock = self._take_snapshot(control, workers)
        loose = [t for t in objects if t.has_data and not t.transactional]
        holding = self.non_transactional == "lock" and bool(loose)
        if holding:
            lock.pending = len(loose)
        else:
            lock.release()
        return self._tasks(control, consistency, objects, lock, holding=holding)

    def _tasks(
        self,
        control: MyConnection,
        consistency: dict[str, Any],
        objects: list[TableInfo],
        lock: _ReadLock,
        *,
        holding: bool,
    ) -> DatabaseDump:
        loose = [t for t in objects if t.has_data and not t.transactional]
        consistency["non_transactional"] = {
            "mode": self.non_transactional,
            "tables": [f"{t.name} ({t.engine})" for t in loose],
        }
        if loose and not holding:
            log.warning(
                "%s: %d table(s) use non-transactional engines and are read after the lock is "
                "released, so they may not match the snapshot: %s "
                '(set backup.non_transactional = "lock" to hold the read lock while they are dumped)',
                self.database,
                len(loose),
                ", ".join(consistency["non_transactional"]["tables"]),
            )
        for info in objects:
            if info.table_type == "SYSTEM VERSIONED":
                log.warning("%s.%s: only current rows are backed up, not history", self.database, info.name)
        header = f"dbbackup: database {self.database} on {self.flavor.name} {self.flavor.version}"
        pre = schema.pre_data(control, self.database, objects, header)
        post = schema.post_data(control, self.database, objects, header)
        sequences = schema.sequence_values(control, self.database, objects, header)
        dump = DatabaseDump(
            name=self.database,
            properties=schema.database_properties(control, self.database, self.flavor),
            consistency=consistency,
        )
        dump.first.append(DumpTask("pre-data.sql", "pre-data", _constant(pre), size_hint=len(pre)))
        for index, info in enumerate((t for t in objects if t.has_data), start=1):
            table = TableRef(
                schema=self.database,
                name=info.name,
                columns=[c.name for c in tsv.dump_order(info.columns)],
            )
            release = lock.task_done if holding and not info.transactional else None
            task = DumpTask(
                f"data/{index:05d}.tsv",
                "table-data",
                self._table_task(info, release),
                table=table,
                size_hint=info.size,
            )
            (dump.first if release else dump.parallel).append(task)
        if sequences:
            dump.parallel.append(DumpTask("sequences.sql", "sequences", _constant(sequences)))
        dump.parallel.append(DumpTask("post-data.sql", "post-data", _constant(post), size_hint=len(post)))
        return dump

    def _table_task(self, info: TableInfo, release: Callable[[], None] | None) -> Callable[[Sink], None]:
        statement = tsv.select_statement(self.database, info.name, info.columns)
        columns = tsv.dump_order(info.columns)
        short = any(c.kind != "long" for c in columns)

        def run(sink: Sink) -> None:
            conn = self._pool.get(timeout=self.endpoint.io_timeout or None)
            if conn is None:
                self._pool.put(None)
                raise IOFailure(f"{self.database}: table {info.name} not dumped: an earlier table failed")
            healthy = False
            try:
                rows = _stream_rows(conn, statement, sink, short=short)
                healthy = True
                log.debug("%s.%s: %d rows", self.database, info.name, rows)
            except pymysql.err.Error as exc:
                raise describe_error(exc, f"{self.database}: table {info.name}", self.endpoint) from exc
            except DbBackupError as exc:
                exc.message = f"{self.database}: table {info.name}: {exc.message}"
                raise
            finally:
                if healthy:
                    self._pool.put(conn)
                else:
                    # Unread rows would be drained by a polite close; a reset is immediate.
                    with contextlib.suppress(pymysql.err.Error, OSError):
                        conn.close()
                    self._pool.put(None)
                if release is not None:
                    release()

        return run


def _stream_rows(conn: MyConnection, statement: str, sink: Sink, *, short: bool) -> int:
    cursor = pymysql.cursors.SSCursor(conn)
    cursor.execute(statement)
    buffer = bytearray()
    count = 0
    while rows := cursor.fetchmany(FETCH_ROWS):
        for row in rows:
            fields = _fields(row, short)
            count += 1
            if sum(len(field) for field in fields) >= WRITE_CHUNK:
                # A huge row goes out field by field: no copy of it is ever joined.
                if buffer:
                    sink.write(buffer)
                    buffer = bytearray()
                for index, field in enumerate(fields):
                    if index:
                        sink.write(tsv.TAB)
                    sink.write(field)
                sink.write(tsv.NEWLINE)
                continue
            buffer += tsv.TAB.join(fields) if len(fields) > 1 else fields[0]
            buffer += tsv.NEWLINE
            if len(buffer) >= WRITE_CHUNK:
                sink.write(buffer)
                buffer = bytearray()
    if buffer:
        sink.write(buffer)
    cursor.close()
    return count


def _fields(row: tuple[Any, ...], short: bool) -> list[bytes]:
    """The fields of one line: the server-formatted part (if any), then long values escaped here."""
    if not short:
        return [tsv.escape(value) for value in row]
    head = row[0]
    if head is None:
        raise DataError(
            "a row's text form is larger than the server's max_allowed_packet",
            hint="raise it on the server (SET GLOBAL max_allowed_packet = 1073741824) and back up again",
        )
    return [bytes(head), *(tsv.escape(value) for value in row[1:])]


def _constant(data: bytes) -> Callable[[Sink], None]:
    def run(sink: Sink) -> None:
        if data:
            sink.write(data)

    return run
