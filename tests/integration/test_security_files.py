"""Files dbbackup creates are private and ours; links planted where it writes are refused.

A permissions audit walks everything the real program created during encrypted
backups, verify, restore, catalog rebuild and cleanup (under umask 000, so
only dbbackup's own care counts). The symlink attacks plant a link where a
runtime file, a lock or a manifest will go, and check that the file it points
to is never written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import PostgresServer
from harness.files import private_tree_problems

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious\n", encoding="utf-8")
    return path


@pytest.fixture
def encrypted_cli(make_cli: MakeCli, pg_server: PostgresServer, tmp_path: Path) -> Cli:
    from conftest import run_cli

    identity = tmp_path / "keys" / "id.key"
    identity.parent.mkdir(mode=0o700)
    (tmp_path / "logs").mkdir(mode=0o700)
    done = run_cli("key", "generate", "-o", identity, timeout=30, umask=0)
    assert done.returncode == 0, done.stderr
    cli = make_cli(
        pg_server,
        env={"STATE_DIRECTORY": str(tmp_path / "state")},
        encryption={"recipients": [done.stdout.strip()], "identity_file": str(identity)},
        retention={"keep_last": 1},
        log={"file": str(tmp_path / "logs" / "dbbackup.log")},
    )
    return cli


def test_everything_created_is_private_and_ours(
    encrypted_cli: Cli, tiny_db: str, tmp_path: Path, scratch_names: Any
) -> None:
    cli = encrypted_cli
    first = json.loads(cli.run("backup", "--json", "--database", tiny_db, umask=0).stdout)["id"]
    steps = [
        ("backup", "--database", tiny_db),
        ("verify", first, "--deep"),
        ("restore", first, "--database", tiny_db, "--target-db", scratch_names("audit")),
        ("catalog", "rebuild"),
        ("cleanup",),
        ("list",),
    ]
    for args in steps:
        done = cli.run(*args, umask=0)
        assert done.returncode == 0, cli.describe(done)
    assert not cli.set_dir(first).exists(), "cleanup kept the older set"
    trees = [
        cli.repo,
        Path(cli.env["RUNTIME_DIRECTORY"]),
        tmp_path / "state",
        tmp_path / "logs",
        tmp_path / "keys",
    ]
    for tree in trees:
        assert tree.exists(), tree
        assert private_tree_problems(tree) == [], tree
    assert any(p.name == "manifest.json" for p in cli.repo.rglob("*"))
    assert list((tmp_path / "state").rglob("*.json")), "restore kept no state"


def test_a_linked_runtime_directory_is_not_used(dbbackup_cli: Cli, tiny_db: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    link = tmp_path / "linked-runtime"
    link.symlink_to(elsewhere)
    # Its own XDG_RUNTIME_DIR, so that the fallback is not a directory other tests share.
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    env = {"RUNTIME_DIRECTORY": str(link), "XDG_RUNTIME_DIR": str(xdg)}
    done = dbbackup_cli.run("backup", "--database", tiny_db, env=env)
    assert done.returncode in (0, 77), dbbackup_cli.describe(done)
    assert list(elsewhere.iterdir()) == []


def test_a_planted_lock_link_is_refused(dbbackup_cli: Cli, tiny_db: str, victim: Path) -> None:
    runtime = Path(dbbackup_cli.env["RUNTIME_DIRECTORY"])
    (runtime / "backup-default.lock").symlink_to(victim)
    done = dbbackup_cli.run("backup", "--database", tiny_db)
    assert done.returncode == 77, dbbackup_cli.describe(done)
    assert "symbolic link" in done.stderr
    assert victim.read_text(encoding="utf-8") == "precious\n"


def test_a_manifest_link_planted_during_an_encrypted_backup_is_refused(
    encrypted_cli: Cli, busy_database: str, victim: Path
) -> None:
    cli = encrypted_cli
    proc = cli.popen("backup", "--database", busy_database)
    deadline = time.monotonic() + 60
    sets: list[Path] = []
    while not sets and time.monotonic() < deadline and proc.poll() is None:
        sets = [p for p in (cli.repo / "default").glob("*-full-*") if p.is_dir()] if cli.repo.exists() else []
        time.sleep(0.005)
    assert sets, (
        f"the set directory never appeared: {proc.poll()} {proc.stderr.read() if proc.stderr else ''}"
    )
    (sets[0] / "manifest.json").symlink_to(victim)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 77, err
    assert "symbolic link" in err
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert json.loads(cli.ok("list", "--json").stdout) == []


def test_a_restore_state_link_is_never_written_through(
    dbbackup_cli: Cli, tiny_db: str, tmp_path: Path, victim: Path, scratch_names: Any
) -> None:
    dbbackup_cli.env["STATE_DIRECTORY"] = str(tmp_path / "state")
    made = dbbackup_cli.backup("--database", tiny_db)
    target = scratch_names("state")
    dbbackup_cli.ok("restore", made["id"], "--target-db", target)
    [state] = (tmp_path / "state").rglob(f"{made['id']}-*.json")
    state.unlink()
    state.symlink_to(victim)
    done = dbbackup_cli.run("restore", made["id"], "--target-db", target, "--clean")
    assert done.returncode != 0, dbbackup_cli.describe(done)
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert state.is_symlink()
