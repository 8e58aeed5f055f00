"""What dbbackup leaves on disk: private modes, our owner, no temp files, no followed links."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import PostgresServer
from harness.files import private_tree_problems

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = pytest.mark.timeout(120)


def _exercise(cli: Cli, database: str, target: str, *, umask: int = -1) -> str:
    """Backup, verify, show, restore, catalog rebuild and sync; returns the set id."""
    backup = cli.run("backup", "--json", "--database", database, umask=umask)
    assert backup.returncode == 0, cli.describe(backup)
    set_id = str(json.loads(backup.stdout)["id"])
    for args in (
        ("verify", set_id, "--deep"),
        ("show", set_id),
        ("restore", set_id, "--target-db", target),
        ("catalog", "rebuild"),
        ("catalog", "sync"),
        ("list",),
    ):
        done = cli.run(*args, umask=umask)
        assert done.returncode == 0, cli.describe(done)
    return set_id


@pytest.mark.parametrize("umask", [-1, 0o000], ids=["inherited-umask", "umask-000"])
def test_every_file_is_private_and_ours(
    make_cli: MakeCli,
    pg_server: PostgresServer,
    tiny_db: str,
    scratch_names: Callable[[str], str],
    tmp_path: Path,
    umask: int,
) -> None:
    # The password through dbbackup's own source, so the 0600 passfile path is used too.
    cli = make_cli(pg_server, password="", env={"DBBACKUP_CONNECTION_PASSWORD": pg_server.password})
    set_id = _exercise(cli, tiny_db, scratch_names("private"), umask=umask)
    assert (cli.set_dir(set_id) / "manifest.json").is_file()
    assert (cli.repo / "catalog.sqlite").is_file()
    assert private_tree_problems(cli.repo) == []
    runtime = tmp_path / "runtime"
    assert private_tree_problems(runtime) == []
    assert list(runtime.rglob("*pgpass*")) == [], "a passfile outlived its run"


def test_config_init_writes_a_private_file_even_with_umask_000(dbbackup_cli: Cli, tmp_path: Path) -> None:
    sample = tmp_path / "sample.toml"
    done = dbbackup_cli.run("config", "init", "--output", sample, umask=0)
    assert done.returncode == 0, dbbackup_cli.describe(done)
    assert stat.S_IMODE(sample.stat().st_mode) == 0o600
    assert "[connection]" in sample.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


# -- planted symbolic links -----------------------------------------------------------------


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file an attacker would like dbbackup to overwrite through a link."""
    path = tmp_path / "victim.txt"
    path.write_text("precious\n", encoding="utf-8")
    return path


def test_instance_directory_link_is_refused(dbbackup_cli: Cli, tiny_db: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    dbbackup_cli.repo.mkdir(mode=0o700)
    (dbbackup_cli.repo / "default").symlink_to(elsewhere)
    done = dbbackup_cli.run("backup", "--database", tiny_db)
    assert done.returncode == 77, dbbackup_cli.describe(done)
    assert "symbolic link" in done.stderr
    assert list(elsewhere.iterdir()) == []


def test_catalog_link_is_refused(dbbackup_cli: Cli, tiny_db: str, victim: Path) -> None:
    dbbackup_cli.repo.mkdir(mode=0o700)
    (dbbackup_cli.repo / "catalog.sqlite").symlink_to(victim)
    done = dbbackup_cli.run("list")
    assert done.returncode == 77, dbbackup_cli.describe(done)
    assert "symlink" in done.stderr
    assert victim.read_text(encoding="utf-8") == "precious\n"


def test_manifest_link_is_not_followed(dbbackup_cli: Cli, tiny_db: str, tmp_path: Path) -> None:
    made = dbbackup_cli.backup("--database", tiny_db)
    manifest = dbbackup_cli.set_dir(made["id"]) / "manifest.json"
    outside = tmp_path / "outside-manifest.json"
    shutil.copy(manifest, outside)
    manifest.unlink()
    manifest.symlink_to(outside)
    assert dbbackup_cli.list_json() == []
    done = dbbackup_cli.run("show", made["id"])
    assert done.returncode == 66, dbbackup_cli.describe(done)


def test_object_link_is_not_followed(
    dbbackup_cli: Cli, tiny_db: str, tmp_path: Path, scratch_names: Callable[[str], str]
) -> None:
    made = dbbackup_cli.backup("--database", tiny_db)
    manifest = json.loads((dbbackup_cli.set_dir(made["id"]) / "manifest.json").read_text())
    key = next(o["key"] for o in manifest["databases"][0]["objects"] if o["role"] == "table-data")
    stored = dbbackup_cli.set_dir(made["id"]) / key
    outside = tmp_path / "outside-object"
    shutil.copy(stored, outside)
    stored.unlink()
    stored.symlink_to(outside)

    verified = dbbackup_cli.run("verify", made["id"])
    assert verified.returncode == 65, dbbackup_cli.describe(verified)
    assert key in verified.stderr
    assert "symbolic link" in verified.stdout + verified.stderr
    restored = dbbackup_cli.run("restore", made["id"], "--target-db", scratch_names("linked"))
    assert restored.returncode == 65, dbbackup_cli.describe(restored)


def test_config_init_does_not_write_through_a_link(dbbackup_cli: Cli, victim: Path) -> None:
    link = victim.with_name("dbbackup.toml")
    link.symlink_to(victim)
    done = dbbackup_cli.run("config", "init", "--output", link, "--force")
    assert done.returncode == 77, dbbackup_cli.describe(done)
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert link.is_symlink()


def test_log_file_link_is_refused(dbbackup_cli: Cli, victim: Path) -> None:
    link = victim.with_name("dbbackup.log")
    link.symlink_to(victim)
    dbbackup_cli.set("log", "file", str(link))
    done = dbbackup_cli.run("list")
    assert done.returncode in (73, 77), dbbackup_cli.describe(done)
    assert victim.read_text(encoding="utf-8") == "precious\n"
