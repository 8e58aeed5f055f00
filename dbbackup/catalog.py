"""SQLite index of backup sets.

The catalog is a cache: the manifests in the repository are the truth, and
``dbbackup catalog rebuild`` recreates the catalog from them at any time. So a
corrupt or too-new catalog file is reported (DataError) with that hint, never
repaired in place.

Many dbbackup processes may share one catalog: it runs in WAL mode, every write
is a ``BEGIN IMMEDIATE`` transaction, and a busy database is retried with
exponential backoff and jitter until ``busy_timeout`` runs out (then
TemporaryFailure, exit 75).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from dbbackup.errors import (
    CannotCreateError,
    DataError,
    DbBackupError,
    InputMissingError,
    InternalError,
    IOFailure,
    PermissionDeniedError,
    TemporaryFailure,
    UsageError,
)

SCHEMA_VERSION = 2
REBUILD_HINT = "the catalog is only a cache of the manifests: run `dbbackup catalog rebuild`"

_T = TypeVar("_T")
_Begin = Literal["IMMEDIATE"] | None

# Primary result codes (the low byte of SQLite's extended codes).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_PERM = 3

_FIRST_BACKOFF = 0.005
_MAX_BACKOFF = 0.5
_AMBIGUOUS_SHOWN = 10


def _schema_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE sets (
            id TEXT PRIMARY KEY,
            instance TEXT NOT NULL,
            kind TEXT NOT NULL,
            engine TEXT NOT NULL,
            databases TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            started_epoch REAL NOT NULL,
            stored_bytes INTEGER NOT NULL,
            encrypted INTEGER NOT NULL,
            location TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX sets_by_instance_time ON sets (instance, started_epoch, id)")
    # One row per (set, database), only to filter by database; `sets.databases` keeps
    # the names in manifest order.
    conn.execute(
        """CREATE TABLE set_databases (
            set_id TEXT NOT NULL REFERENCES sets (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            PRIMARY KEY (set_id, name)
        )"""
    )
    conn.execute("CREATE INDEX set_databases_by_name ON set_databases (name, set_id)")


def _schema_v2(conn: sqlite3.Connection) -> None:
    # History that outlives the sets (retention deletes them): every backup run,
    # failed or not, and every verification, for metrics and `dbbackup check`.
    conn.execute(
        """CREATE TABLE runs (
            instance TEXT NOT NULL,
            databases TEXT NOT NULL,
            ok INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            finished_epoch REAL NOT NULL,
            error TEXT NOT NULL,
            set_id TEXT
        )"""
    )
    conn.execute("CREATE INDEX runs_by_instance_time ON runs (instance, ok, finished_epoch)")
    conn.execute("CREATE UNIQUE INDEX runs_by_set ON runs (set_id) WHERE set_id IS NOT NULL")
    conn.execute(
        """CREATE TABLE verifications (
            set_id TEXT NOT NULL,
            instance TEXT NOT NULL,
            databases TEXT NOT NULL,
            mode TEXT NOT NULL,
            ok INTEGER NOT NULL,
            finished_at TEXT NOT NULL,
            finished_epoch REAL NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX verifications_by_instance_time ON verifications (instance, finished_epoch)")


# MIGRATIONS[n] upgrades a catalog from user_version n to n + 1.
MIGRATIONS: Mapping[int, Callable[[sqlite3.Connection], None]] = {0: _schema_v1, 1: _schema_v2}


@dataclass(frozen=True)
class SetSummary:
    """What the catalog knows of one backup set (the manifest has the rest)."""

    id: str
    instance: str
    kind: str
    engine: str
    databases: tuple[str, ...]
    started_at: str
    finished_at: str
    stored_bytes: int
    encrypted: bool
    location: str  # set path or key prefix, relative to the repository

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "instance": self.instance,
            "kind": self.kind,
            "engine": self.engine,
            "databases": list(self.databases),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "stored_bytes": self.stored_bytes,
            "encrypted": self.encrypted,
            "location": self.location,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> SetSummary:
        """Build a summary from ``to_json()`` output; DataError if a field is wrong."""
        where = f"set summary {d.get('id')!r}"
        databases = d.get("databases")
        if not isinstance(databases, list | tuple) or not all(isinstance(name, str) for name in databases):
            raise DataError(f"{where}: 'databases' must be a list of strings")
        stored_bytes = d.get("stored_bytes")
        if not isinstance(stored_bytes, int) or isinstance(stored_bytes, bool):
            raise DataError(f"{where}: 'stored_bytes' must be an integer")
        encrypted = d.get("encrypted")
        if not isinstance(encrypted, bool):
            raise DataError(f"{where}: 'encrypted' must be true or false")
        text = {key: d.get(key) for key in _TEXT_FIELDS}
        for key, value in text.items():
            if not isinstance(value, str):
                raise DataError(f"{where}: '{key}' must be a string")
        return cls(
            id=str(text["id"]),
            instance=str(text["instance"]),
            kind=str(text["kind"]),
            engine=str(text["engine"]),
            databases=tuple(databases),
            started_at=str(text["started_at"]),
            finished_at=str(text["finished_at"]),
            stored_bytes=stored_bytes,
            encrypted=encrypted,
            location=str(text["location"]),
        )


_TEXT_FIELDS = ("id", "instance", "kind", "engine", "started_at", "finished_at", "location")


@dataclass(frozen=True)
class RunGroup:
    """Backup runs of one instance with the same outcome and database list."""

    databases: tuple[str, ...]
    ok: bool
    count: int
    last_finished_epoch: float


@dataclass(frozen=True)
class RunRecord:
    instance: str
    databases: tuple[str, ...]
    ok: bool
    started_at: str
    finished_at: str
    finished_epoch: float
    error: str
    set_id: str | None


@dataclass(frozen=True)
class VerificationRecord:
    set_id: str
    databases: tuple[str, ...]
    mode: str
    ok: bool
    finished_at: str
    finished_epoch: float


def _iso_and_epoch(moment: datetime | str, what: str) -> tuple[str, float]:
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise InternalError(f"{what} must carry a UTC offset")
        return moment.isoformat(timespec="seconds"), moment.timestamp()
    try:
        parsed = datetime.fromisoformat(moment)
    except ValueError as exc:
        raise InternalError(f"{what} {moment!r} is not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise InternalError(f"{what} {moment!r} must carry a UTC offset")
    return moment, parsed.timestamp()


def _started_epoch(summary: SetSummary) -> float:
    # Sorting by the instant, not the text: offsets differ across DST changes and zones.
    try:
        return datetime.fromisoformat(summary.started_at).timestamp()
    except ValueError as exc:
        raise DataError(
            f"set {summary.id}: started_at {summary.started_at!r} is not an ISO 8601 time"
        ) from exc


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does (SQLite would use the umask)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError as exc:
        raise CannotCreateError(
            f"cannot create the catalog {path}: directory {path.parent} does not exist",
            hint=f"create the directory {path.parent} first",
        ) from exc
    except PermissionError as exc:
        raise PermissionDeniedError(
            f"cannot open the catalog {path}: {exc.strerror}",
            hint="check the owner and mode of the file and its directory",
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionDeniedError(
                f"the catalog {path} is a symlink; refusing to follow it",
                hint="replace the symlink by a regular file or point the config at the target",
            ) from exc
        raise CannotCreateError(f"cannot open the catalog {path}: {exc.strerror}") from exc
    os.close(fd)


class Catalog:
    """An open catalog; use ``Catalog.open(path)``, preferably as a context manager."""

    def __init__(self, conn: sqlite3.Connection, path: Path, busy_timeout: float) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.busy_timeout = busy_timeout

    @classmethod
    def open(cls, path: Path, *, busy_timeout: float = 30.0) -> Catalog:
        """Open (creating it 0600 if needed) and migrate the catalog at ``path``.

        The parent directory must exist. DataError if the file is not a usable
        catalog; TemporaryFailure if it stays busy longer than ``busy_timeout``.
        """
        _create_private_file(path)
        try:
            conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise _translate(exc, path) from exc
        catalog = cls(conn, path, busy_timeout)
        try:
            catalog._run(catalog._prepare_connection, begin=None)
            # Readers must not need the write lock: migrate only when the version differs.
            if catalog._run(_user_version, begin=None) != SCHEMA_VERSION:
                catalog._run(catalog._migrate, begin="IMMEDIATE")
        except BaseException:
            conn.close()
            raise
        return catalog

    @staticmethod
    def discard(path: Path) -> None:
        """Delete a catalog and its -wal/-shm files (for a rebuild from the manifests)."""
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            with contextlib.suppress(FileNotFoundError):
                name.unlink()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def upsert(self, summary: SetSummary) -> None:
        """Insert the set, or replace what the catalog had under its id."""
        self._run(lambda conn: _insert(conn, summary), begin="IMMEDIATE")

    def remove(self, set_id: str) -> None:
        """Forget a set; removing an unknown id is not an error."""
        self._run(
            lambda conn: conn.execute("DELETE FROM sets WHERE id = ?", (set_id,)),
            begin="IMMEDIATE",
        )

    def list(self, *, instance: str | None = None, database: str | None = None) -> list[SetSummary]:
        """Sets matching the filters, oldest first."""
        return self._run(lambda conn: _select(conn, _LIST_QUERY, instance, database), begin=None)

    def get(self, set_id_or_unique_prefix: str) -> SetSummary:
        """The set with this id, or the only set whose id starts with it."""
        wanted = set_id_or_unique_prefix
        if not wanted:
            raise UsageError("no backup set id given", hint="`dbbackup list` shows the sets")
        matches = self._run(
            lambda conn: [
                _summary(row) for row in conn.execute(_PREFIX_QUERY, (len(wanted), wanted)).fetchall()
            ],
            begin=None,
        )
        exact = [summary for summary in matches if summary.id == wanted]
        if exact:
            return exact[0]
        if not matches:
            raise InputMissingError(
                f"no backup set {wanted!r} in the catalog {self.path}",
                hint="`dbbackup list` shows the sets; `dbbackup catalog sync` picks up "
                "sets written by other hosts",
            )
        if len(matches) > 1:
            shown = ", ".join(summary.id for summary in matches[:_AMBIGUOUS_SHOWN])
            more = len(matches) - _AMBIGUOUS_SHOWN
            if more > 0:
                shown += f" and {more} more"
            raise UsageError(
                f"backup set id {wanted!r} is ambiguous: it matches {shown}",
                hint="give more characters of the id",
            )
        return matches[0]

    def latest(self, *, instance: str, database: str | None = None) -> SetSummary:
        """The newest set of ``instance`` (that contains ``database``, if given)."""
        found = self._run(lambda conn: _select(conn, _LATEST_QUERY, instance, database), begin=None)
        if not found:
            scope = f"instance {instance!r}" + (f", database {database!r}" if database else "")
            raise InputMissingError(
                f"no backup set for {scope} in the catalog {self.path}",
                hint="run `dbbackup backup` first, or `dbbackup catalog sync` if sets exist",
            )
        return found[0]

    def replace_all(self, summaries: Iterable[SetSummary], *, instance: str | None = None) -> int:
        """Replace every set (of ``instance``, if given) by ``summaries`` in one transaction.

        Returns how many sets the catalog holds for that scope afterwards.
        """
        # Read everything first: the write lock must not wait on manifest reads.
        rows = list(summaries)
        if instance is not None:
            strays = sorted({s.instance for s in rows} - {instance})
            if strays:
                raise InternalError(f"catalog rebuild of instance {instance!r} was given sets of {strays}")

        def rebuild(conn: sqlite3.Connection) -> int:
            conn.execute(
                "DELETE FROM sets WHERE (:instance IS NULL OR instance = :instance)",
                {"instance": instance},
            )
            for summary in rows:
                _insert(conn, summary)
            return len({summary.id for summary in rows})

        return self._run(rebuild, begin="IMMEDIATE")

    def known_ids(self) -> set[str]:
        rows = self._run(lambda conn: conn.execute("SELECT id FROM sets").fetchall(), begin=None)
        return {str(row[0]) for row in rows}

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` or the problems, one a line."""
        rows = self._run(lambda c: c.execute("PRAGMA integrity_check").fetchall(), begin=None)
        return "\n".join(str(row[0]) for row in rows)

    # -- history: runs and verifications ---------------------------------------------------

    def record_run(
        self,
        instance: str,
        databases: Iterable[str],
        ok: bool,
        started_at: datetime | str,
        finished_at: datetime | str,
        error: str | None = None,
        *,
        set_id: str | None = None,
    ) -> None:
        """Remember one backup run; ``set_id`` names the set a successful run wrote.

        Times are aware datetimes or ISO 8601 text with an offset. Recording the
        same ``set_id`` twice keeps the first record.
        """
        started_text, _ = _iso_and_epoch(started_at, "started_at")
        finished_text, finished_epoch = _iso_and_epoch(finished_at, "finished_at")
        names = json.dumps(list(databases))
        row = (instance, names, int(ok), started_text, finished_text, finished_epoch, error or "", set_id)
        self._run(lambda conn: conn.execute(_INSERT_RUN, row), begin="IMMEDIATE")

    def record_verification(
        self,
        set_id: str,
        *,
        instance: str,
        databases: Iterable[str],
        ok: bool,
        mode: str,
        finished_at: datetime | str,
    ) -> None:
        """Remember the outcome of verifying a set (``mode``: quick, checksum or deep)."""
        finished_text, finished_epoch = _iso_and_epoch(finished_at, "finished_at")
        row = (set_id, instance, json.dumps(list(databases)), mode, int(ok), finished_text, finished_epoch)
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO verifications (set_id, instance, databases, mode, ok, finished_at,"
                " finished_epoch) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            ),
            begin="IMMEDIATE",
        )

    def expire(self, set_id: str) -> None:
        """Forget a set deleted by retention, keeping it in the run history.

        A set found by ``catalog sync`` has no run record yet; one is added so
        that counts of successful backups never go down when sets are deleted.
        """

        def body(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT instance, databases, started_at, finished_at, started_epoch FROM sets WHERE id = ?",
                (set_id,),
            ).fetchone()
            if row is not None:
                instance, names, started_at, finished_at, started_epoch = row
                try:
                    finished_epoch = datetime.fromisoformat(finished_at).timestamp()
                except ValueError:
                    finished_epoch = started_epoch
                run = (instance, names, 1, started_at, finished_at, finished_epoch, "", set_id)
                conn.execute(_INSERT_RUN, run)
            conn.execute("DELETE FROM sets WHERE id = ?", (set_id,))

        self._run(body, begin="IMMEDIATE")

    def count(self, *, instance: str | None = None) -> int:
        """How many sets the catalog holds (of ``instance``, if given)."""
        row = self._run(
            lambda conn: conn.execute(
                "SELECT COUNT(*) FROM sets WHERE (:instance IS NULL OR instance = :instance)",
                {"instance": instance},
            ).fetchone(),
            begin=None,
        )
        return int(row[0])

    def newest_per_database(self, instance: str) -> dict[str, SetSummary]:
        """Database name -> the newest set of ``instance`` that holds it."""
        rows = self._run(lambda conn: conn.execute(_NEWEST_PER_DB, (instance,)).fetchall(), begin=None)
        return {str(row[0]): _summary(row[1:]) for row in rows}

    def run_groups(self, instance: str) -> tuple[RunGroup, ...]:
        """Recorded runs, plus catalogued sets no run recorded, grouped by outcome and databases."""
        rows = self._run(lambda conn: conn.execute(_RUN_GROUPS, (instance, instance)).fetchall(), begin=None)
        return tuple(RunGroup(tuple(json.loads(r[0])), bool(r[1]), int(r[2]), float(r[3])) for r in rows)

    def last_run(self, instance: str, *, ok: bool | None = None) -> RunRecord | None:
        """The most recently finished recorded run (successful or failed only, if ``ok`` is given)."""
        params = {"instance": instance, "ok": None if ok is None else int(ok)}
        row = self._run(lambda conn: conn.execute(_LAST_RUN, params).fetchone(), begin=None)
        if row is None:
            return None
        instance_name, names, succeeded, started_at, finished_at, epoch, error, set_id = row
        return RunRecord(
            instance_name,
            tuple(json.loads(names)),
            bool(succeeded),
            started_at,
            finished_at,
            float(epoch),
            error,
            set_id,
        )

    def verifications(self, instance: str, *, newest_only: bool = False) -> tuple[VerificationRecord, ...]:
        """Verifications of the instance's sets, newest first."""
        query = _VERIFICATIONS + (" LIMIT 1" if newest_only else "")
        rows = self._run(lambda conn: conn.execute(query, (instance,)).fetchall(), begin=None)
        return tuple(
            VerificationRecord(r[0], tuple(json.loads(r[1])), r[2], bool(r[3]), r[4], float(r[5]))
            for r in rows
        )

    # -- transactions --------------------------------------------------------------------

    def _prepare_connection(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise CannotCreateError(
                f"the catalog {self.path} cannot use WAL mode (journal mode {mode!r})",
                hint="keep the catalog on a local filesystem (not NFS or a read-only mount)",
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = _user_version(conn)
        if version > SCHEMA_VERSION:
            raise DataError(
                f"the catalog {self.path} has schema version {version}; this dbbackup "
                f"knows up to {SCHEMA_VERSION}",
                hint=f"upgrade dbbackup, or {REBUILD_HINT}",
            )
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](conn)
            version += 1
            conn.execute(f"PRAGMA user_version = {version:d}")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise InternalError(f"the catalog {self.path} is used after close()")
        return self._conn

    def _run(self, body: Callable[[sqlite3.Connection], _T], *, begin: _Begin) -> _T:
        """Run ``body`` in a transaction, retrying while the database is busy."""
        conn = self._connection()
        deadline = time.monotonic() + self.busy_timeout
        backoff = _FIRST_BACKOFF
        while True:
            # SQLite's own busy wait gets only what is left, so the total stays bounded.
            remaining = max(deadline - time.monotonic(), 0.0)
            conn.execute(f"PRAGMA busy_timeout = {int(remaining * 1000):d}")
            try:
                return _in_transaction(conn, body, begin)
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise _translate(exc, self.path) from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TemporaryFailure(
                        f"the catalog {self.path} is busy: another process held it for "
                        f"more than {self.busy_timeout:g}s",
                        hint="retry later; `fuser -v` on the file shows who holds it",
                    ) from exc
            # Jitter keeps processes that collided from colliding again in lockstep.
            time.sleep(min(remaining, backoff * random.uniform(0.5, 1.5)))
            backoff = min(backoff * 2, _MAX_BACKOFF)


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _in_transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T], begin: _Begin) -> _T:
    if begin is None:
        return body(conn)
    conn.execute(f"BEGIN {begin}")
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _error_code(exc: sqlite3.Error) -> int:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else -1


def _is_busy(exc: sqlite3.Error) -> bool:
    return _error_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _translate(exc: sqlite3.Error, path: Path) -> DbBackupError:
    code = _error_code(exc)
    if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
        return DataError(f"the catalog {path} is corrupt: {exc}", hint=REBUILD_HINT)
    if code == _SQLITE_FULL:
        return IOFailure(f"cannot write the catalog {path}: {exc}", hint="free space on its disk")
    if code == _SQLITE_READONLY:
        return IOFailure(
            f"cannot write the catalog {path}: {exc}",
            hint="check the owner and mode of the file, its -wal/-shm files and directory, "
            "and that the filesystem is mounted read-write",
        )
    if code in (_SQLITE_PERM, _SQLITE_CANTOPEN):
        return PermissionDeniedError(
            f"cannot open the catalog {path}: {exc}",
            hint="check the owner and mode of the file, its -wal/-shm files and directory",
        )
    if code == _SQLITE_IOERR:
        return IOFailure(f"I/O error on the catalog {path}: {exc}")
    return InternalError(f"catalog {path}: unexpected SQLite error: {exc}")


# -- queries: literal SQL only; every value goes through a placeholder ----------------------

_SELECT_SETS = (
    "SELECT id, instance, kind, engine, databases, started_at, finished_at, stored_bytes,"
    " encrypted, location FROM sets"
)
_FILTER = (
    " WHERE (:instance IS NULL OR instance = :instance) AND (:database IS NULL OR id IN"
    " (SELECT set_id FROM set_databases WHERE name = :database))"
)
_LIST_QUERY = _SELECT_SETS + _FILTER + " ORDER BY started_epoch, id"
_LATEST_QUERY = _SELECT_SETS + _FILTER + " ORDER BY started_epoch DESC, id DESC LIMIT 1"
_PREFIX_QUERY = _SELECT_SETS + " WHERE substr(id, 1, ?) = ? ORDER BY started_epoch, id"


_NEWEST_PER_DB = (
    # SQLite takes the bare columns from the row that holds MAX(): the newest set per name.
    "SELECT d.name, s.id, s.instance, s.kind, s.engine, s.databases, s.started_at, s.finished_at,"
    " s.stored_bytes, s.encrypted, s.location, MAX(s.started_epoch) FROM sets s"
    " JOIN set_databases d ON d.set_id = s.id WHERE s.instance = ? GROUP BY d.name"
)
_RUN_GROUPS = (
    "SELECT databases, ok, COUNT(*), MAX(finished_epoch) FROM runs WHERE instance = ?"
    " GROUP BY databases, ok"
    " UNION ALL SELECT databases, 1, COUNT(*), MAX(started_epoch) FROM sets WHERE instance = ?"
    " AND id NOT IN (SELECT set_id FROM runs WHERE set_id IS NOT NULL) GROUP BY databases"
)
_LAST_RUN = (
    "SELECT instance, databases, ok, started_at, finished_at, finished_epoch, error, set_id FROM runs"
    " WHERE instance = :instance AND (:ok IS NULL OR ok = :ok) ORDER BY finished_epoch DESC LIMIT 1"
)
_VERIFICATIONS = (
    "SELECT set_id, databases, mode, ok, finished_at, finished_epoch FROM verifications"
    " WHERE instance = ? ORDER BY finished_epoch DESC, rowid DESC"
)
_INSERT_RUN = (
    "INSERT OR IGNORE INTO runs (instance, databases, ok, started_at, finished_at, finished_epoch,"
    " error, set_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert(conn: sqlite3.Connection, summary: SetSummary) -> None:
    # Deleting first (rather than INSERT OR REPLACE) cascades to set_databases.
    conn.execute("DELETE FROM sets WHERE id = ?", (summary.id,))
    conn.execute(
        "INSERT INTO sets (id, instance, kind, engine, databases, started_at, finished_at,"
        " started_epoch, stored_bytes, encrypted, location)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            summary.id,
            summary.instance,
            summary.kind,
            summary.engine,
            json.dumps(list(summary.databases)),
            summary.started_at,
            summary.finished_at,
            _started_epoch(summary),
            summary.stored_bytes,
            int(summary.encrypted),
            summary.location,
        ),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO set_databases (set_id, name) VALUES (?, ?)",
        [(summary.id, name) for name in summary.databases],
    )


def _select(
    conn: sqlite3.Connection, query: str, instance: str | None, database: str | None
) -> list[SetSummary]:
    params = {"instance": instance, "database": database}
    return [_summary(row) for row in conn.execute(query, params).fetchall()]


def _summary(row: Any) -> SetSummary:
    return SetSummary(
        id=row[0],
        instance=row[1],
        kind=row[2],
        engine=row[3],
        databases=tuple(json.loads(row[4])),
        started_at=row[5],
        finished_at=row[6],
        stored_bytes=int(row[7]),
        encrypted=bool(row[8]),
        location=row[9],
    )
