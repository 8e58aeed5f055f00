"""Many backups at once, and backups that die midway: the repository stays consistent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import PostgresServer
from harness.process import descendants, pid_alive

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

PARALLEL = 16
INSTANCES = 4


def _integrity(catalog: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=10)) as conn:
        return "\n".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))


def _count_sets(catalog: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=10)) as conn:
        return int(conn.execute("SELECT count(*) FROM sets").fetchone()[0])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sixteen_backups_at_once_into_a_missing_repository(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, tmp_path: Path
) -> None:
    # Backups of one instance take turns (instance lock); four instances run side
    # by side, so directory creation and catalog writes really race.
    top = tmp_path / "not" / "yet"
    cli = make_cli(pg_server, repo=top / "repo")
    instances = [f"p{number % INSTANCES}" for number in range(PARALLEL)]
    procs = [
        cli.popen("--instance", instance, "backup", "--json", "--database", tiny_db, "--jobs", "1")
        for instance in instances
    ]
    outputs = [proc.communicate(timeout=100) for proc in procs]

    failures = [
        f"exit {proc.returncode}: {err}"
        for proc, (_, err) in zip(procs, outputs, strict=True)
        if proc.returncode
    ]
    assert failures == []
    made = {json.loads(out)["id"]: instance for (out, _), instance in zip(outputs, instances, strict=True)}
    assert len(made) == PARALLEL
    listed: dict[str, str] = {}
    for instance in sorted(set(instances)):
        done = cli.ok("--instance", instance, "list", "--json")
        listed.update({entry["id"]: entry["instance"] for entry in json.loads(done.stdout)})
    assert listed == made
    catalog = cli.repo / "catalog.sqlite"
    assert _integrity(catalog) == "ok"
    assert _count_sets(catalog) == PARALLEL
    for directory in (top.parent, top, cli.repo, *(cli.repo / i for i in set(instances))):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


# -- interrupted backups -------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _wait_mid_backup(cli: Cli, proc: subprocess.Popen[str], timeout: float = 60) -> tuple[Path, list[int]]:
    """Wait until the backup streams its large objects through pg_dump; its set dir and children."""
    deadline = time.monotonic() + timeout
    instance_dir = cli.repo / "default"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"backup ended early: {proc.communicate(timeout=10)}"
        children = descendants(proc.pid)
        dumping = [
            pid for pid in children if "pg_dump" in _cmdline(pid) and "--section=data" in _cmdline(pid)
        ]
        sets = list(instance_dir.iterdir()) if instance_dir.is_dir() else []
        if dumping and len(sets) == 1 and any(p.name.startswith(".tmp-") for p in sets[0].rglob("*")):
            return sets[0], children
        time.sleep(0.05)
    raise AssertionError("the backup never reached its large-object dump")


def _alive(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if pid_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if pid_alive(pid)]
    return alive


def _start_slow_backup(
    make_cli: MakeCli, pg_server: PostgresServer, busy_database: str
) -> tuple[Cli, subprocess.Popen[str]]:
    # xz keeps the large-object dump busy for many seconds: time to interrupt it.
    cli = make_cli(pg_server)
    proc = cli.popen("backup", "--database", busy_database, "--compression", "xz", "--jobs", "2")
    return cli, proc


@pytest.mark.timeout(120)
def test_sigterm_mid_backup_removes_the_partial_set_and_its_children(
    make_cli: MakeCli, pg_server: PostgresServer, busy_database: str, tiny_db: str
) -> None:
    cli, proc = _start_slow_backup(make_cli, pg_server, busy_database)
    set_dir, children = _wait_mid_backup(cli, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM" in stderr
    assert _alive(children, timeout=10) == [], "child processes outlived dbbackup"
    assert not set_dir.exists(), "the partial set was left behind"
    assert cli.list_json() == []
    done = cli.run("show", set_dir.name)
    assert done.returncode == 66, cli.describe(done)
    # The repository is still usable.
    cli.backup("--database", tiny_db)


@pytest.mark.timeout(120)
def test_sigkill_mid_backup_leaves_no_listed_set(
    make_cli: MakeCli, pg_server: PostgresServer, busy_database: str, tiny_db: str
) -> None:
    cli, proc = _start_slow_backup(make_cli, pg_server, busy_database)
    set_dir, children = _wait_mid_backup(cli, proc)
    proc.kill()
    proc.communicate(timeout=30)
    try:
        assert proc.returncode == -signal.SIGKILL
        assert set_dir.is_dir(), "nothing to prove: the set directory is gone"
        assert not (set_dir / "manifest.json").exists()
        assert cli.list_json() == []
        done = cli.run("show", set_dir.name)
        assert done.returncode == 66, cli.describe(done)
        made = cli.backup("--database", tiny_db)
        assert [s["id"] for s in cli.list_json()] == [made["id"]]
    finally:
        # Orphans of a SIGKILLed parent end when their pipe breaks; do not wait for that.
        for pid in _alive(children, timeout=0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
