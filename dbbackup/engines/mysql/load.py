"""Loading one table's rows: LOAD DATA LOCAL INFILE fed through a pipe, one transaction.

A feeder thread copies the verified object into the write end of a pipe;
PyMySQL hands the read end (``/dev/fd/N``) to the server. The transaction
commits only after the server reported no warning and ``finish`` proved the
object's checksum, so a damaged, cut or altered stream leaves nothing behind.

InnoDB needs its redo log to be at least ten times the largest row it
stores; a bigger row can stall it (MariaDB 10.11 was seen to hang, then abort,
on a 256 MiB value with a 96 MiB redo log). Such a row is refused before it is
sent whole, naming the table, the row's size and the setting to raise.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pymysql

from dbbackup.backupset import TableRef
from dbbackup.engines.base import Source, iter_chunks
from dbbackup.engines.mysql import infile, tsv
from dbbackup.engines.mysql.connection import (
    Flavor,
    MyConnection,
    MyEndpoint,
    describe_error,
    error_code,
    error_text,
    execute,
    query,
    text,
)
from dbbackup.errors import DataError, DbBackupError, IOFailure, PermissionDeniedError

log = logging.getLogger("dbbackup.mysql")

# Restored rows are what the server once accepted; only NO_AUTO_VALUE_ON_ZERO
# matters (a stored 0 stays 0), and any conversion shows up as a warning.
LOAD_SQL_MODE = "NO_AUTO_VALUE_ON_ZERO,ALLOW_INVALID_DATES"
FEEDER_JOIN_TIMEOUT = 60.0
MIB = 1 << 20


def row_size_limit(conn: MyConnection, flavor: Flavor) -> int:
    """A tenth of the server's redo log: the largest row InnoDB takes safely."""
    candidates = ["@@innodb_log_file_size"]
    if not flavor.mariadb:
        candidates = ["@@innodb_redo_log_capacity", "@@innodb_log_file_size * @@innodb_log_files_in_group"]
    for expression in candidates:
        try:
            rows = query(conn, f"SELECT {expression}")
        except pymysql.err.OperationalError as exc:
            if error_code(exc) == 1193:  # unknown variable: an older or newer server
                continue
            raise
        if rows and rows[0][0] is not None:
            return int(rows[0][0]) // 10
    return 0


def json_columns(conn: MyConnection, database: str, table: str) -> list[str]:
    rows = query(
        conn,
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
        "AND DATA_TYPE = 'json'",
        (database, table),
    )
    return [text(row[0]) for row in rows]


class _Feeder(threading.Thread):
    """Copies a source into the write end of a pipe; remembers what went wrong."""

    def __init__(self, source: Source, fd: int, row_limit: int) -> None:
        super().__init__(name="load-feeder", daemon=True)
        self.source = source
        self.fd = fd
        self.error: BaseException | None = None
        self.written = 0
        self.rows = tsv.RowSizeGuard(row_limit)
        self.broken_pipe = False

    def run(self) -> None:
        try:
            with os.fdopen(self.fd, "wb", buffering=0) as pipe:
                chunks = iter_chunks(self.source)
                for chunk in chunks:
                    try:
                        self.rows.feed(chunk)
                    except tsv.RowTooLarge as too_large:
                        raise self._measured(too_large, chunks) from None
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

    def _measured(self, too_large: tsv.RowTooLarge, chunks: Iterator[bytes]) -> tsv.RowTooLarge:
        """The refused row's whole size: read on (nothing more is sent) to its end."""
        if too_large.complete:
            return too_large
        for chunk in chunks:
            size = self.rows.rest_of_line(chunk)
            if size is not None:
                return tsv.RowTooLarge(size, too_large.limit, complete=True)
        return tsv.RowTooLarge(self.rows.unfinished, too_large.limit, complete=True)


class TableLoad:
    """One table's rows into one transaction on ``conn`` (autocommit off, local_infile on)."""

    def __init__(
        self,
        conn: MyConnection,
        endpoint: MyEndpoint,
        where: str,
        table: TableRef,
        converted: list[str],
        row_limit: int,
    ) -> None:
        self.conn = conn
        self.endpoint = endpoint
        self.where = where
        self.table = table
        self.converted = converted
        self.row_limit = row_limit

    def run(self, source: Source, finish: Callable[[], None]) -> int:
        read_fd, write_fd = os.pipe()
        feeder = _Feeder(source, write_fd, self.row_limit)
        try:
            warnings = self._load(read_fd, feeder)
        except BaseException:
            if feeder.ident is None:
                os.close(write_fd)
            raise
        if feeder.error is not None:
            raise self._feeder_error(feeder.error)
        if feeder.is_alive() or feeder.broken_pipe:
            raise IOFailure(f"restoring {self.where}: the server stopped reading the rows early")
        _check_warnings(self.where, warnings)
        finish()
        try:
            self.conn.commit()
        except pymysql.err.Error as exc:
            raise describe_error(exc, f"restoring {self.where}", self.endpoint) from exc
        return feeder.written

    def _load(self, read_fd: int, feeder: _Feeder) -> list[tuple[Any, ...]]:
        path = f"/dev/fd/{read_fd}"
        try:
            execute(self.conn, f"SET sql_mode = '{LOAD_SQL_MODE}', foreign_key_checks = 0, unique_checks = 0")
            statement = tsv.load_statement(path, self.table.name, self.table.columns, self.converted)
            feeder.start()
            with infile.allow(self.conn, path):
                execute(self.conn, statement)
            return query(self.conn, "SHOW WARNINGS")
        except infile.InfileRefused as exc:
            raise PermissionDeniedError(f"restoring {self.where}: {exc.args[1]}") from exc
        except pymysql.err.Error as exc:
            raise self._server_error(exc, feeder) from exc
        except AttributeError as exc:
            # PyMySQL, after losing the connection mid-load, still tries to end the
            # upload on its closed socket; the loss is the error to report.
            if isinstance(exc.__context__, pymysql.err.Error):
                raise self._server_error(exc.__context__, feeder) from exc
            raise
        finally:
            # Without a reader left, a feeder stuck on a full pipe gets EPIPE and ends.
            os.close(read_fd)
            if feeder.ident is not None:
                feeder.join(FEEDER_JOIN_TIMEOUT)

    def _feeder_error(self, error: BaseException) -> BaseException:
        if isinstance(error, tsv.RowTooLarge):
            needed = -(-error.size * 10 // MIB)
            return DataError(
                f"restoring {self.where}: a row of about {error.size} bytes is more than a tenth of the "
                f"server's InnoDB redo log (about {error.limit * 10} bytes); InnoDB cannot store it safely",
                hint=f"raise innodb_log_file_size (MySQL 8.0.30+: innodb_redo_log_capacity) to at least "
                f"{needed} MiB (SET GLOBAL innodb_log_file_size = {needed * MIB} on MariaDB 10.11), then "
                "restore again; nothing of this table was committed",
            )
        return error

    def _server_error(self, exc: pymysql.err.Error, feeder: _Feeder) -> DbBackupError:
        if feeder.error is not None and isinstance(feeder.error, DbBackupError):
            # The stream itself failed (a damaged object); the server only saw it end.
            return feeder.error
        if isinstance(feeder.error, tsv.RowTooLarge):
            result = self._feeder_error(feeder.error)
            assert isinstance(result, DbBackupError)
            return result
        if error_code(exc) in (1153, 1301, 1118):
            largest = feeder.rows.largest
            return DataError(
                f"restoring {self.where}: a row of about {largest} bytes is too large for the server "
                f"({error_text(exc)})",
                hint="raise max_allowed_packet (and for BLOB rows innodb_log_file_size) on the server, "
                "then restore again; nothing of this table was committed",
            )
        return describe_error(exc, f"restoring {self.where}", self.endpoint)


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
