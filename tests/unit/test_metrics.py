"""Metrics from real catalogs (SQLite files) and manifests on disk: values, counters, exposition."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbbackup import backupset
from dbbackup.backupset import DatabaseEntry, Manifest, StoredObject
from dbbackup.catalog import Catalog, SetSummary, _schema_v1
from dbbackup.metrics import (
    InstanceStatus,
    SizeCache,
    Target,
    families_for,
    read_status,
    render,
    write_textfile,
)
from dbbackup.storage import LocalStorage, Storage

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def summary(
    set_id: str, finished: datetime, databases: tuple[str, ...] = ("app",), size: int = 1000
) -> SetSummary:
    started = finished - timedelta(minutes=10)
    return SetSummary(
        id=set_id,
        instance="main",
        kind="full",
        engine="postgres",
        databases=databases,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=finished.isoformat(timespec="seconds"),
        stored_bytes=size,
        encrypted=False,
        location=f"main/{set_id}",
    )


def set_id(moment: datetime, tag: str) -> str:
    return f"{moment:%Y%m%dT%H%M%S}+0000-full-{tag}"


def write_manifest(storage: Storage, ident: str, finished: datetime, sizes: dict[str, int]) -> None:
    databases = [
        DatabaseEntry(
            name, name, {}, [StoredObject(f"{name}/data", "table-data", size, size * 3, "0" * 64, "zstd")]
        )
        for name, size in sizes.items()
    ]
    manifest = Manifest(
        id=ident, instance="main", engine="postgres", kind="full",
        started_at=(finished - timedelta(minutes=10)).isoformat(timespec="seconds"),
        finished_at=finished.isoformat(timespec="seconds"), timezone="utc", server_version="15",
        server_host="db", compression="zstd", compression_level=3, cluster=False, databases=databases,
    )  # fmt: skip
    storage.prepare(f"main/{ident}")
    backupset.write_manifest(storage, manifest)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def target(repo: Path) -> Target:
    return Target("main", repo / "catalog.sqlite", LocalStorage(repo))


def by_name(text: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [
        v
        for sample_labels, v in found.get(name, [])
        if all(sample_labels.get(k) == w for k, w in labels.items())
    ]
    assert len(matches) == 1, (name, labels, found.get(name))
    return matches[0]


def test_metrics_per_instance_and_database(target: Target, repo: Path) -> None:
    old, new = NOW - timedelta(days=1), NOW - timedelta(hours=3)
    old_id, new_id = set_id(old, "aaaaaaaa"), set_id(new, "bbbbbbbb")
    write_manifest(target.storage, new_id, new, {"app": 700, "crm": 300})
    with Catalog.open(target.catalog_path) as catalog:
        catalog.upsert(summary(old_id, old, ("app", "crm")))
        catalog.upsert(summary(new_id, new, ("app", "crm")))
        catalog.record_run(
            "main", ["*"], False, NOW - timedelta(hours=2), NOW - timedelta(hours=1), "refused"
        )
        catalog.record_verification(
            old_id,
            instance="main",
            databases=["app", "crm"],
            ok=True,
            mode="deep",
            finished_at=NOW - timedelta(hours=5),
        )
        catalog.record_verification(
            new_id, instance="main", databases=["app", "crm"], ok=True, mode="quick", finished_at=NOW
        )
    found = by_name(render([target]))
    assert value(found, "dbbackup_last_success_timestamp_seconds", database="app") == new.timestamp()
    assert value(found, "dbbackup_last_duration_seconds", database="crm") == 600
    # Sizes per database come from the newest set's manifest.
    assert value(found, "dbbackup_last_size_bytes", database="app") == 700
    assert value(found, "dbbackup_last_size_bytes", database="crm") == 300
    assert value(found, "dbbackup_backups_total", database="app", result="success") == 2
    assert value(found, "dbbackup_backups_total", database="*", result="failure") == 1
    # A quick verify (sizes only) is no proof: the deep one counts.
    expected = (NOW - timedelta(hours=5)).timestamp()
    assert value(found, "dbbackup_verify_last_success_timestamp_seconds", database="app") == expected
    assert value(found, "dbbackup_sets", instance="main") == 2
    assert value(found, "dbbackup_catalog_up", instance="main") == 1
    age = value(found, "dbbackup_backup_age_seconds", database="app")
    assert abs(age - (datetime.now(UTC) - new).total_seconds()) < 60


def test_success_counter_never_goes_down_when_sets_expire(target: Target) -> None:
    ids = [set_id(NOW - timedelta(days=n), f"{n:08x}") for n in range(4)]
    with Catalog.open(target.catalog_path) as catalog:
        for n, ident in enumerate(ids):
            catalog.upsert(summary(ident, NOW - timedelta(days=n)))
        # One set was recorded by its run as well: it must not count twice.
        catalog.record_run("main", ["app"], True, NOW - timedelta(minutes=10), NOW, set_id=ids[0])
    before = value(by_name(render([target])), "dbbackup_backups_total", result="success")
    with Catalog.open(target.catalog_path) as catalog:
        catalog.expire(ids[3])
        catalog.expire(ids[2])
        catalog.expire(ids[0])
        assert catalog.count(instance="main") == 1
    after = by_name(render([target]))
    assert before == value(after, "dbbackup_backups_total", result="success") == 4
    assert value(after, "dbbackup_sets") == 1


def test_instance_without_catalog_reports_zero_sets(target: Target) -> None:
    found = by_name(render([target]))
    assert value(found, "dbbackup_catalog_up") == 1
    assert value(found, "dbbackup_sets") == 0
    assert "dbbackup_last_success_timestamp_seconds" not in found
    assert not target.catalog_path.exists(), "reading metrics must not create a catalog"


def test_unreadable_catalog_is_reported_not_raised(target: Target) -> None:
    target.catalog_path.write_bytes(b"this is not a database" * 100)
    status = read_status(target)
    assert "corrupt" in status.error
    found = by_name(render([target]))
    assert value(found, "dbbackup_catalog_up") == 0
    assert "dbbackup_sets" not in found


def test_catalog_of_schema_1_is_migrated_and_keeps_its_sets(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    _schema_v1(conn)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    os.chmod(path, 0o600)
    ident = set_id(NOW, "cccccccc")
    with Catalog.open(path) as catalog:
        catalog.upsert(summary(ident, NOW))
    with Catalog.open(path) as catalog:
        catalog.record_run("main", ["app"], False, NOW, NOW + timedelta(seconds=1), "boom")
        last = catalog.last_run("main", ok=False)
        assert last is not None and last.error == "boom" and last.databases == ("app",)
        assert catalog.last_run("main", ok=True) is None
        assert catalog.newest_per_database("main")["app"].id == ident


def test_size_cache_reads_each_manifest_once_and_stays_bounded(target: Target) -> None:
    storage = target.storage
    ids = [set_id(NOW - timedelta(hours=n), f"{n:08x}") for n in range(3)]
    for n, ident in enumerate(ids):
        write_manifest(storage, ident, NOW - timedelta(hours=n), {"app": 10 + n})
    cache = SizeCache(entries=2)
    assert cache.sizes(storage, "main", ids[0]) == {"app": 10}
    # Once cached, the manifest is not read again (it never changes).
    (Path(storage.url) / "main" / ids[0] / "manifest.json").unlink()
    assert cache.sizes(storage, "main", ids[0]) == {"app": 10}
    cache.sizes(storage, "main", ids[1])
    cache.sizes(storage, "main", ids[2])
    assert cache.sizes(storage, "main", ids[0]) is None  # evicted, and now gone from disk


def test_families_skip_what_is_unknown() -> None:
    status = InstanceStatus("main", sets=1)
    status.database("app").successes = 3
    families = families_for([status], now=NOW.timestamp())
    assert [s.value for s in families["runs"].samples] == [3.0, 0.0]
    assert families["last_success"].samples == []


def test_textfile_is_written_atomically_and_private(target: Target, tmp_path: Path) -> None:
    out = tmp_path / "textfile"
    out.mkdir()
    (out / "dbbackup.prom").write_text("stale\n")
    path = write_textfile(out, [target])
    assert path == out / "dbbackup.prom"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "dbbackup_catalog_up" in path.read_text()
    assert sorted(p.name for p in out.iterdir()) == ["dbbackup.prom"]
