"""Tests for dbbackup.catalog on real SQLite files."""

from __future__ import annotations

import itertools
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from dbbackup.catalog import SCHEMA_VERSION, Catalog, SetSummary
from dbbackup.errors import (
    DataError,
    DbBackupError,
    InputMissingError,
    InternalError,
    TemporaryFailure,
    UsageError,
)

pytestmark = pytest.mark.timeout(30)


def summary(
    set_id: str,
    *,
    instance: str = "main",
    started_at: str = "2026-11-27T14:03:11+01:00",
    databases: tuple[str, ...] = ("app",),
) -> SetSummary:
    return SetSummary(
        id=set_id,
        instance=instance,
        kind="full",
        engine="postgres",
        databases=databases,
        started_at=started_at,
        finished_at=started_at,
        stored_bytes=1234,
        encrypted=False,
        location=f"{instance}/{set_id}",
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "catalog.db"


@pytest.fixture
def catalog(path: Path) -> Iterator[Catalog]:
    with Catalog.open(path, busy_timeout=5) as opened:
        yield opened


@pytest.mark.parametrize("umask", [0o077, 0o022])
def test_files_are_0600_and_wal(path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with Catalog.open(path) as cat:
            cat.upsert(summary("s1"))
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    finally:
        os.umask(old)
    assert modes == {f.name: 0o600 for f in files}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_upsert_get_and_reopen(path: Path) -> None:
    first = summary("20261127T140311+0100-full-ab12", databases=("app", "crm"))
    with Catalog.open(path) as cat:
        cat.upsert(first)
        assert cat.get(first.id) == first
    with Catalog.open(path) as cat:
        assert cat.get(first.id) == first
        assert cat.integrity_check() == "ok"


def test_upsert_replaces_the_set(catalog: Catalog) -> None:
    catalog.upsert(summary("s1", databases=("old",)))
    newer = replace(summary("s1", databases=("new", "b")), stored_bytes=99, encrypted=True)
    catalog.upsert(newer)
    assert catalog.list() == [newer]
    assert catalog.list(database="old") == []
    assert catalog.list(database="b") == [newer]


def test_remove(catalog: Catalog) -> None:
    catalog.upsert(summary("s1"))
    catalog.upsert(summary("s2"))
    catalog.remove("s1")
    catalog.remove("never-there")
    assert catalog.known_ids() == {"s2"}
    assert catalog.list(database="app") == [summary("s2")]


def test_list_is_oldest_first_by_instant_and_filters(catalog: Catalog) -> None:
    # 02:10+01:00 is 01:10 UTC: earlier than 01:30+00:00 although it sorts later as text.
    late = summary("a-late", started_at="2026-03-29T01:30:00+00:00", databases=("app",))
    early = summary("z-early", started_at="2026-03-29T02:10:00+01:00", databases=("app", "crm"))
    other = summary("other", instance="replica", started_at="2026-01-01T00:00:00+00:00")
    for item in (late, early, other):
        catalog.upsert(item)
    assert catalog.list() == [other, early, late]
    assert catalog.list(instance="main") == [early, late]
    assert catalog.list(database="crm") == [early]
    assert catalog.list(instance="replica", database="crm") == []
    assert catalog.list(instance="nobody") == []


def test_get_by_unique_prefix(catalog: Catalog) -> None:
    catalog.upsert(summary("20261127T1403-full-ab12"))
    catalog.upsert(summary("20261127T1403-full-cd34"))
    catalog.upsert(summary("20261127T1403-full-cd34x"))
    assert catalog.get("20261127T1403-full-a").id == "20261127T1403-full-ab12"
    # An exact id wins over the longer ids it prefixes.
    assert catalog.get("20261127T1403-full-cd34").id == "20261127T1403-full-cd34"
    # LIKE/GLOB metacharacters are plain characters in a prefix.
    with pytest.raises(InputMissingError):
        catalog.get("2026%")


def test_get_ambiguous_prefix_lists_candidates(catalog: Catalog) -> None:
    catalog.upsert(summary("s-ab12"))
    catalog.upsert(summary("s-cd34"))
    with pytest.raises(UsageError) as raised:
        catalog.get("s-")
    assert raised.value.exit_code == 2
    assert "s-ab12" in raised.value.message and "s-cd34" in raised.value.message


def test_get_missing_or_empty(catalog: Catalog) -> None:
    with pytest.raises(InputMissingError) as raised:
        catalog.get("nope")
    assert raised.value.exit_code == 66
    assert raised.value.hint
    with pytest.raises(UsageError):
        catalog.get("")


def test_latest(catalog: Catalog) -> None:
    old = summary("old", started_at="2026-01-01T00:00:00+00:00", databases=("app", "crm"))
    new = summary("new", started_at="2026-01-02T00:00:00+00:00", databases=("app",))
    other = summary("x", instance="replica", started_at="2027-01-01T00:00:00+00:00")
    for item in (new, old, other):
        catalog.upsert(item)
    assert catalog.latest(instance="main") == new
    assert catalog.latest(instance="main", database="crm") == old
    with pytest.raises(InputMissingError) as raised:
        catalog.latest(instance="main", database="nothing")
    assert raised.value.exit_code == 66


def test_replace_all_everything(catalog: Catalog) -> None:
    catalog.upsert(summary("gone"))
    fresh = [summary("a"), summary("b", instance="replica")]
    assert catalog.replace_all(iter(fresh)) == 2
    assert catalog.known_ids() == {"a", "b"}


def test_replace_all_one_instance_leaves_others(catalog: Catalog) -> None:
    catalog.upsert(summary("main-old"))
    catalog.upsert(summary("replica-1", instance="replica"))
    assert catalog.replace_all([summary("main-new")], instance="main") == 1
    assert catalog.known_ids() == {"main-new", "replica-1"}
    with pytest.raises(InternalError):
        catalog.replace_all([summary("r", instance="replica")], instance="main")


def test_replace_all_is_one_transaction(catalog: Catalog) -> None:
    catalog.upsert(summary("kept"))
    broken = summary("broken", started_at="yesterday")
    with pytest.raises(DataError):
        catalog.replace_all([summary("a"), broken])
    assert catalog.known_ids() == {"kept"}


def test_summary_json_round_trip() -> None:
    original = summary("s1", databases=("app", "crm"))
    data = original.to_json()
    assert {"id", "kind", "engine", "databases", "started_at", "finished_at"} <= set(data)
    assert {"stored_bytes", "encrypted"} <= set(data)
    assert SetSummary.from_json(data) == original


@pytest.mark.parametrize(
    ("key", "value"),
    [("databases", "app"), ("stored_bytes", "12"), ("encrypted", 1), ("id", None)],
)
def test_summary_from_bad_json(key: str, value: object) -> None:
    data = summary("s1").to_json()
    data[key] = value
    with pytest.raises(DataError):
        SetSummary.from_json(data)


def test_garbage_file_is_data_error_with_rebuild_hint(path: Path) -> None:
    path.write_bytes(b"this is not a catalog\n" * 500)
    with pytest.raises(DataError) as raised:
        Catalog.open(path)
    assert raised.value.exit_code == 65
    assert raised.value.hint and "dbbackup catalog rebuild" in raised.value.hint
    Catalog.discard(path)
    with Catalog.open(path) as cat:
        assert cat.integrity_check() == "ok"


def test_malformed_pages_are_data_error(path: Path) -> None:
    with Catalog.open(path) as cat:
        cat.replace_all(summary(f"s{number:03d}") for number in range(300))
    page_size = 4096
    damaged = path.stat().st_size - page_size
    with path.open("r+b") as file:
        file.seek(page_size)  # keep the header page: the file still looks like SQLite
        file.write(b"\x07" * damaged)
    with pytest.raises(DataError) as raised, Catalog.open(path) as cat:
        cat.list()
    assert "malformed" in raised.value.message
    assert raised.value.hint and "dbbackup catalog rebuild" in raised.value.hint


def test_newer_schema_is_refused(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DataError, match="schema version"):
        Catalog.open(path)


@contextmanager
def write_lock_held(path: Path, seconds: float = 10.0) -> Iterator[threading.Event]:
    """Hold the catalog's write lock from another connection until the event is set."""
    locked = threading.Event()
    release = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(seconds)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(5)
        yield release
    finally:
        release.set()
        holder.join(10)


def test_busy_catalog_is_temporary_failure_within_timeout(path: Path) -> None:
    Catalog.open(path).close()
    with write_lock_held(path), Catalog.open(path, busy_timeout=0.5) as cat:
        assert cat.list() == []  # readers are not blocked by a writer
        started = time.monotonic()
        with pytest.raises(TemporaryFailure) as raised:
            cat.upsert(summary("s1"))
        elapsed = time.monotonic() - started
    assert raised.value.exit_code == 75
    assert str(path) in raised.value.message
    assert 0.45 <= elapsed < 3.0


def test_busy_catalog_is_retried_until_free(path: Path) -> None:
    Catalog.open(path).close()
    with write_lock_held(path) as release, Catalog.open(path, busy_timeout=10) as cat:
        releaser = threading.Timer(0.3, release.set)
        releaser.start()
        started = time.monotonic()
        cat.upsert(summary("s1"))
        assert time.monotonic() - started >= 0.25
        assert cat.known_ids() == {"s1"}
        releaser.join(5)


def real_busy_error(path: Path) -> sqlite3.OperationalError:
    with write_lock_held(path):
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            return exc
        finally:
            conn.close()
    raise AssertionError("BEGIN IMMEDIATE did not report the database busy")


def test_busy_errors_sqlite_does_not_wait_out_are_retried(path: Path) -> None:
    # Some SQLITE_BUSY cases (WAL recovery, a lock race on open) skip SQLite's busy
    # handler; the catalog's own backoff loop has to absorb them.
    Catalog.open(path).close()
    busy = real_busy_error(path)
    attempts: list[float] = []

    def flaky(conn: sqlite3.Connection) -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise busy
        return "done"

    with Catalog.open(path, busy_timeout=5) as cat:
        assert cat._run(flaky, begin="IMMEDIATE") == "done"
        assert cat.known_ids() == set()
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert len(gaps) == 3 and all(gap > 0.001 for gap in gaps)


def test_use_after_close_is_internal_error(path: Path) -> None:
    cat = Catalog.open(path)
    cat.close()
    cat.close()
    with pytest.raises(InternalError):
        cat.list()


def test_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.db"
    link = tmp_path / "catalog.db"
    link.symlink_to(target)
    with pytest.raises(DbBackupError) as raised:
        Catalog.open(link)
    assert raised.value.exit_code == 77
    assert not target.exists()


def test_missing_directory_is_cannot_create(tmp_path: Path) -> None:
    with pytest.raises(DbBackupError) as raised:
        Catalog.open(tmp_path / "missing" / "catalog.db")
    assert raised.value.exit_code == 73
