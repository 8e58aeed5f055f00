"""dbbackup cleanup on real repositories: decisions, deletion order, faults, concurrency, real backups.

Most tests write backup sets directly (a manifest, one object, a catalog entry), so that
sets can be days or years old; one test runs real backups against the session's server.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, MakeCli, describe
from harness import PostgresServer

from dbbackup import backupset
from dbbackup.actions.cleanup import run_cleanup
from dbbackup.actions.context import Runtime
from dbbackup.backupset import DatabaseEntry, Manifest, StoredObject
from dbbackup.catalog import Catalog, SetSummary
from dbbackup.config import load_config
from dbbackup.errors import IOFailure
from dbbackup.storage import LocalStorage

pytestmark = pytest.mark.timeout(180)

CET = timezone(timedelta(hours=1))


def write_set(
    repo: Path,
    finished: datetime,
    *,
    instance: str = "default",
    kind: str = "full",
    parent: str | None = None,
    databases: Sequence[str] = ("app",),
    catalog: bool = True,
) -> str:
    """A complete set as a backup leaves it: objects, then the manifest, then the catalog entry."""
    storage = LocalStorage(repo)
    started = finished - timedelta(minutes=5)
    set_id = backupset.new_set_id(started, kind)
    entries = []
    for name in databases:
        storage.prepare(f"{instance}/{set_id}/{name}")
        with storage.writer(f"{instance}/{set_id}/{name}/data.copy") as handle:
            handle.write(b"rows\n" * 20)
        stored = StoredObject(f"{name}/data.copy", "table-data", 100, 100, "0" * 64, "none")
        entries.append(DatabaseEntry(name, name, {}, [stored]))
    manifest = Manifest(
        id=set_id, instance=instance, engine="postgres", kind=kind,
        started_at=backupset.iso(started), finished_at=backupset.iso(finished), timezone="local",
        server_version="15.0", server_host="db", compression="none", compression_level=0,
        cluster=False, databases=entries, parent=parent,
    )  # fmt: skip
    backupset.write_manifest(storage, manifest)
    if catalog:
        with Catalog.open(repo / "catalog.sqlite") as opened:
            opened.upsert(SetSummary.from_json(manifest.summary()))
    return set_id


def daily(repo: Path, days: int, *, instance: str = "default") -> list[str]:
    """One set a day at 02:00 (UTC+1), newest first, the newest one this night."""
    today = datetime.now(CET).replace(hour=2, minute=0, second=0, microsecond=0)
    if today > datetime.now(CET):
        today -= timedelta(days=1)
    return [write_set(repo, today - timedelta(days=n), instance=instance) for n in range(days)]


def remaining(repo: Path, instance: str = "default") -> list[str]:
    return list(reversed(backupset.complete_set_ids(LocalStorage(repo), instance)))


def catalog_ids(repo: Path) -> set[str]:
    with Catalog.open(repo / "catalog.sqlite") as catalog:
        return catalog.known_ids()


def cleanup_json(cli: Cli, *args: str) -> dict[str, Any]:
    done = cli.run("cleanup", "--json", *args)
    assert done.returncode == 0, describe(done)
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture
def cli(make_cli: MakeCli) -> Cli:
    made = make_cli(None, retention={"keep_last": 2, "keep_daily": 4})
    made.repo.mkdir(mode=0o700)
    return made


def test_dry_run_explains_every_decision_and_touches_nothing(cli: Cli) -> None:
    ids = daily(cli.repo, 7)
    report = cleanup_json(cli, "--dry-run")
    decisions = {d["id"]: d for d in report["decisions"]}
    assert [d["id"] for d in report["decisions"]] == ids  # newest first
    assert decisions[ids[0]]["reasons"][:2] == ["newest complete set", "keep_last 2 (#1)"]
    assert decisions[ids[3]]["action"] == "keep" and decisions[ids[3]]["reasons"][0].startswith("daily ")
    assert [d["action"] for d in report["decisions"]] == ["keep"] * 4 + ["delete"] * 3
    assert decisions[ids[6]]["reasons"] == ["no rule keeps it"]
    assert report["dry_run"] is True and report["deleted"] == ids[4:]
    assert remaining(cli.repo) == ids and catalog_ids(cli.repo) == set(ids)

    text = cli.ok("cleanup", "--dry-run").stdout
    assert "(dry run: nothing is deleted)" in text
    assert f"DELETE  {ids[6]}" in text and "4 kept, 3 would be deleted" in text


def test_cleanup_deletes_expired_sets_from_repository_and_catalog(cli: Cli) -> None:
    ids = daily(cli.repo, 7)
    report = cleanup_json(cli)
    assert report["deleted"] == ids[4:]
    assert remaining(cli.repo) == ids[:4]
    assert catalog_ids(cli.repo) == set(ids[:4])
    for gone in ids[4:]:
        assert not (cli.repo / "default" / gone).exists()
    # Applying the same policy again finds nothing more to delete.
    assert cleanup_json(cli)["deleted"] == []
    assert [s["id"] for s in cli.list_json()] == list(reversed(ids[:4]))


def test_without_rules_nothing_is_deleted(make_cli: MakeCli) -> None:
    cli = make_cli(None)
    cli.repo.mkdir(mode=0o700)
    ids = daily(cli.repo, 3)
    done = cli.ok("cleanup")
    assert "no [retention] rule is configured: every set is kept" in done.stdout
    assert remaining(cli.repo) == ids


def test_a_kept_incremental_keeps_its_whole_chain(make_cli: MakeCli) -> None:
    cli = make_cli(None, retention={"keep_last": 1})
    cli.repo.mkdir(mode=0o700)
    now = datetime.now(CET)
    lonely = write_set(cli.repo, now - timedelta(days=30))
    full = write_set(cli.repo, now - timedelta(days=20))
    diff = write_set(cli.repo, now - timedelta(days=10), kind="diff", parent=full)
    incr = write_set(cli.repo, now - timedelta(hours=1), kind="incr", parent=diff)
    report = cleanup_json(cli)
    assert report["deleted"] == [lonely]
    assert remaining(cli.repo) == [incr, diff, full]
    reasons = {d["id"]: d["reasons"] for d in report["decisions"]}
    assert reasons[full] == [f"parent of {diff}"]


def test_unreadable_manifest_is_kept_and_said_so(cli: Cli) -> None:
    ids = daily(cli.repo, 7)
    (cli.repo / "default" / ids[6] / "manifest.json").write_text("{ not json")
    report = cleanup_json(cli)
    assert ids[6] not in report["deleted"] and (cli.repo / "default" / ids[6]).is_dir()
    assert ids[6] in report["unreadable"]
    assert report["deleted"] == ids[4:6]


def test_leftovers_of_crashed_runs_go_but_a_running_backup_stays(cli: Cli) -> None:
    ids = daily(cli.repo, 2)
    old = backupset.new_set_id(datetime.now(CET) - timedelta(days=3))
    running = backupset.new_set_id(datetime.now(CET) - timedelta(minutes=3))
    for name in (old, running):
        (cli.repo / "default" / name / "app").mkdir(parents=True, mode=0o700)
        (cli.repo / "default" / name / "app" / "data.copy").write_bytes(b"partial")
    assert cleanup_json(cli, "--dry-run")["leftovers"] == [old]
    assert (cli.repo / "default" / old).is_dir()
    assert cleanup_json(cli)["leftovers"] == [old]
    assert not (cli.repo / "default" / old).exists()
    assert (cli.repo / "default" / running).is_dir()
    assert remaining(cli.repo) == ids


def test_concurrent_cleanups_agree(make_cli: MakeCli) -> None:
    cli = make_cli(None, retention={"keep_last": 3})
    cli.repo.mkdir(mode=0o700)
    ids = daily(cli.repo, 40)
    runs = [cli.popen("cleanup") for _ in range(3)]
    for proc in runs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert remaining(cli.repo) == ids[:3]
    assert catalog_ids(cli.repo) == set(ids[:3])
    assert sorted(p.name for p in (cli.repo / "default").iterdir()) == sorted(ids[:3])


# -- the deletion protocol, in process, with a storage that fails on cue ----------------------


class FailingStorage(LocalStorage):
    """A local repository that records deletions and can fail removing one set's objects."""

    def __init__(self, root: Path, fail_prefix: str | None = None) -> None:
        super().__init__(root)
        self.fail_prefix = fail_prefix
        self.calls: list[str] = []

    def delete_prefix(self, prefix: str) -> None:
        self.calls.append(prefix)
        if prefix == self.fail_prefix:
            raise OSError(errno.EIO, "Input/output error")
        super().delete_prefix(prefix)


@pytest.fixture
def runtime_for(tmp_path: Path) -> Iterator[Any]:
    opened: list[Runtime] = []

    def make(repo: Path, storage: LocalStorage, **retention: object) -> Runtime:
        config = tmp_path / "inprocess.toml"
        lines = [f'[storage]\nrepository = "{repo}"\n[retention]'] + [
            f"{k} = {v}" for k, v in retention.items()
        ]
        config.write_text("\n".join(lines) + "\n")
        settings = load_config(config_file=config, instance=None, environ={}).settings
        runtime = Runtime(settings=settings, storage=storage, workdir=tmp_path)
        opened.append(runtime)
        return runtime

    yield make
    for runtime in opened:
        runtime.close()


def test_manifest_goes_first_so_a_half_deleted_set_is_never_listed(tmp_path: Path, runtime_for: Any) -> None:
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o700)
    ids = daily(repo, 4)
    storage = FailingStorage(repo, fail_prefix=f"default/{ids[2]}")
    runtime = runtime_for(repo, storage, keep_last=1)
    with pytest.raises(IOFailure, match="Input/output error"):
        run_cleanup(runtime, dry_run=False)
    # Newest first: ids[1] is gone entirely, ids[2] lost its manifest but kept its objects.
    assert storage.calls == [f"default/{ids[1]}", f"default/{ids[2]}"]
    assert not (repo / "default" / ids[2] / "manifest.json").exists()
    assert (repo / "default" / ids[2] / "app" / "data.copy").exists()
    assert remaining(repo) == [ids[0], ids[3]]
    # The catalog forgot only what is gone for good; a rerun finishes the job.
    assert catalog_ids(repo) == {ids[0], ids[2], ids[3]}
    healthy = runtime_for(repo, LocalStorage(repo), keep_last=1)
    report = run_cleanup(healthy, dry_run=False)
    assert report.deleted == [ids[3]] and report.leftovers == [ids[2]]
    assert sorted(p.name for p in (repo / "default").iterdir()) == [ids[0]]
    assert catalog_ids(repo) == {ids[0]}


def test_children_are_deleted_before_their_parents(tmp_path: Path, runtime_for: Any) -> None:
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o700)
    now = datetime.now(UTC)
    full = write_set(repo, now - timedelta(days=9))
    diff = write_set(repo, now - timedelta(days=8), kind="diff", parent=full)
    incr = write_set(repo, now - timedelta(days=7), kind="incr", parent=diff)
    newest = write_set(repo, now)
    storage = FailingStorage(repo)
    report = run_cleanup(runtime_for(repo, storage, keep_last=1), dry_run=False)
    assert report.deleted == [incr, diff, full]
    assert storage.calls == [f"default/{incr}", f"default/{diff}", f"default/{full}"]
    assert remaining(repo) == [newest]


# -- real backups ------------------------------------------------------------------------------


def test_cleanup_after_real_backups_leaves_a_restorable_newest_set(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    cli = make_cli(pg_server, retention={"keep_last": 1})
    made = [cli.backup("--database", tiny_db)["id"] for _ in range(3)]
    report = cleanup_json(cli)
    assert report["deleted"] == list(reversed(made[:2]))
    assert [s["id"] for s in cli.list_json()] == [made[2]]
    done = cli.run("verify", "latest")
    assert done.returncode == 0, describe(done)
