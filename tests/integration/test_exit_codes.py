"""Every documented exit code, each caused for real (see EPILOG in dbbackup.cli.main).

0 success, 2 usage, 65 damaged data, 66 missing input, 69 unavailable server,
73 cannot create, 74 I/O error, 77 permission denied, 78 configuration error.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import CuttingProxy, PostgresServer, free_port, pg_fingerprint

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = pytest.mark.timeout(120)

NOBODY_UID = 65534
MISSING_SET = "20990101T000000+0000-full-deadbeef"


def _output(done: Any) -> str:
    return f"{done.stdout}\n{done.stderr}"


def _manifest(cli: Cli, set_id: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((cli.set_dir(set_id) / "manifest.json").read_text())
    return loaded


def _table_object(cli: Cli, set_id: str) -> tuple[str, Path]:
    """Relative key and path of the (only) table-data object of the set."""
    database = _manifest(cli, set_id)["databases"][0]
    key = next(o["key"] for o in database["objects"] if o["role"] == "table-data")
    return key, cli.set_dir(set_id) / key


# -- 0 and 2 ------------------------------------------------------------------------------------


def test_successful_backup_and_verify_exit_0(dbbackup_cli: Cli, tiny_db: str) -> None:
    made = dbbackup_cli.backup("--database", tiny_db)
    done = dbbackup_cli.run("verify", made["id"])
    assert done.returncode == 0, dbbackup_cli.describe(done)
    assert "intact" in done.stdout


@pytest.mark.parametrize(
    "args",
    [("backup", "--no-such-flag"), ("backup", "--jobs", "0"), ("restore",),
     ("backup", "--compression", "zip"), ("frobnicate",)],
)  # fmt: skip
def test_bad_command_lines_exit_2(dbbackup_cli: Cli, args: tuple[str, ...]) -> None:
    done = dbbackup_cli.run(*args)
    assert done.returncode == 2, dbbackup_cli.describe(done)
    assert "Usage: dbbackup" in done.stderr


def test_compression_level_out_of_range_names_the_valid_range(dbbackup_cli: Cli) -> None:
    begun = time.monotonic()
    done = dbbackup_cli.run("backup", "--compression", "zstd", "--compression-level", "25")
    assert done.returncode == 2, dbbackup_cli.describe(done)
    assert "1..19" in done.stderr
    assert "25" in done.stderr
    assert time.monotonic() - begun < 10
    assert not dbbackup_cli.repo.exists(), "a refused command created the repository"


def test_conflicting_restore_selection_exits_2(dbbackup_cli: Cli, tiny_db: str) -> None:
    made = dbbackup_cli.backup("--database", tiny_db)
    done = dbbackup_cli.run("restore", made["id"], "--all", "--database", tiny_db, "--target-db", "elsewhere")
    assert done.returncode == 2, dbbackup_cli.describe(done)
    assert "exclude each other" in done.stderr


# -- 65: damaged data ---------------------------------------------------------------------------


def _damage(path: Path, compression: str) -> None:
    data = bytearray(path.read_bytes())
    if compression == "none":
        # Still well-formed COPY text: only the checksum can tell.
        index = data.index(b"row 25")
        data[index] = ord("R")
    else:
        data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_flipped_byte_fails_verify_and_restore_commits_no_rows(
    dbbackup_cli: Cli,
    pg_server: PostgresServer,
    tiny_db: str,
    scratch_names: Callable[[str], str],
    compression: str,
) -> None:
    made = dbbackup_cli.backup("--database", tiny_db, "--compression", compression)
    key, path = _table_object(dbbackup_cli, made["id"])
    _damage(path, compression)

    verified = dbbackup_cli.run("verify", made["id"])
    assert verified.returncode == 65, dbbackup_cli.describe(verified)
    assert key in verified.stderr

    target = scratch_names("damaged")
    restored = dbbackup_cli.run("restore", made["id"], "--target-db", target)
    assert restored.returncode == 65, dbbackup_cli.describe(restored)
    assert key in _output(restored)
    # The schema went in before the data; the rows of the damaged object must not.
    assert pg_server.query("SELECT count(*) FROM t", dbname=target) == [(0,)]


def test_truncated_object_fails_restore_before_touching_the_server(
    dbbackup_cli: Cli, pg_server: PostgresServer, tiny_db: str, scratch_names: Callable[[str], str]
) -> None:
    made = dbbackup_cli.backup("--database", tiny_db)
    _key, path = _table_object(dbbackup_cli, made["id"])
    path.write_bytes(path.read_bytes()[:-10])
    target = scratch_names("truncated")
    done = dbbackup_cli.run("restore", made["id"], "--target-db", target)
    assert done.returncode == 65, dbbackup_cli.describe(done)
    assert pg_server.query("SELECT 1 FROM pg_database WHERE datname = %s", params=(target,)) == []


# -- 66: missing input --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "restore", "verify"])
def test_unknown_set_exits_66(dbbackup_cli: Cli, tiny_db: str, command: str) -> None:
    dbbackup_cli.backup("--database", tiny_db)
    done = dbbackup_cli.run(command, MISSING_SET)
    assert done.returncode == 66, dbbackup_cli.describe(done)
    assert MISSING_SET in done.stderr


def test_set_without_manifest_is_never_listed(dbbackup_cli: Cli, tiny_db: str) -> None:
    kept = dbbackup_cli.backup("--database", tiny_db)
    broken = dbbackup_cli.backup("--database", tiny_db)
    (dbbackup_cli.set_dir(broken["id"]) / "manifest.json").unlink()
    assert [s["id"] for s in dbbackup_cli.list_json()] == [kept["id"]]
    for command in ("show", "restore", "verify"):
        done = dbbackup_cli.run(command, broken["id"])
        assert done.returncode == 66, dbbackup_cli.describe(done)
    latest = json.loads(dbbackup_cli.ok("show", "latest", "--json").stdout)
    assert latest["id"] == kept["id"]


def test_latest_of_an_empty_repository_exits_66(dbbackup_cli: Cli) -> None:
    done = dbbackup_cli.run("restore", "latest")
    assert done.returncode == 66, dbbackup_cli.describe(done)


def test_backup_of_a_missing_database_exits_66(dbbackup_cli: Cli) -> None:
    done = dbbackup_cli.run("backup", "--database", "no_such_database_here")
    assert done.returncode == 66, dbbackup_cli.describe(done)
    assert "no_such_database_here" in done.stderr
    assert dbbackup_cli.list_json() == []


# -- 69: the server cannot be reached -----------------------------------------------------------

FAST_CONNECT = {"connect_timeout": "3s"}


def _assert_unavailable_fast(cli: Cli) -> None:
    begun = time.monotonic()
    done = cli.run("backup", timeout=60)
    elapsed = time.monotonic() - begun
    assert done.returncode == 69, cli.describe(done)
    assert elapsed < 15, f"took {elapsed:.1f} s to give up"
    assert "hint:" in done.stderr
    instance_dir = cli.repo / "default"
    assert not instance_dir.exists() or not any(instance_dir.iterdir())


def test_nothing_listening_exits_69_fast(make_cli: MakeCli, pg_server: PostgresServer) -> None:
    _assert_unavailable_fast(make_cli(pg_server, port=free_port(), connection=FAST_CONNECT))


def test_hung_server_exits_69_within_the_connect_timeout(
    make_cli: MakeCli,
    pg_server: PostgresServer,
    cutting_proxy: Callable[..., CuttingProxy],
) -> None:
    proxy = cutting_proxy(pg_server.host, pg_server.port)
    proxy.freeze()
    _assert_unavailable_fast(make_cli(pg_server, port=proxy.port, connection=FAST_CONNECT))


def test_server_resetting_connections_exits_69(
    make_cli: MakeCli,
    pg_server: PostgresServer,
    cutting_proxy: Callable[..., CuttingProxy],
) -> None:
    proxy = cutting_proxy(pg_server.host, pg_server.port)
    proxy.cut()
    _assert_unavailable_fast(make_cli(pg_server, port=proxy.port, connection=FAST_CONNECT))


# -- 73: the output cannot be created -----------------------------------------------------------


@pytest.mark.parametrize("below", [False, True], ids=["repo-is-mount", "repo-below-mount"])
def test_read_only_repository_exits_73_fast(
    make_cli: MakeCli, pg_server: PostgresServer, readonly_dir: Path, below: bool
) -> None:
    repo = readonly_dir / "repo" if below else readonly_dir
    cli = make_cli(pg_server, repo=repo)
    begun = time.monotonic()
    done = cli.run("backup", timeout=60)
    assert done.returncode == 73, cli.describe(done)
    assert time.monotonic() - begun < 5
    assert str(readonly_dir) in done.stderr
    assert os.listdir(readonly_dir) == []


def test_restore_over_a_non_empty_database_needs_clean(
    dbbackup_cli: Cli, pg_server: PostgresServer, tiny_db: str
) -> None:
    made = dbbackup_cli.backup("--database", tiny_db)
    before = pg_fingerprint(pg_server, tiny_db)
    pg_server.execute("DELETE FROM t WHERE id > 10", dbname=tiny_db)

    refused = dbbackup_cli.run("restore", made["id"])
    assert refused.returncode == 73, dbbackup_cli.describe(refused)
    assert "already exists and is not empty" in refused.stderr
    assert pg_server.query("SELECT count(*) FROM t", dbname=tiny_db) == [(10,)]

    dbbackup_cli.ok("restore", made["id"], "--clean")
    assert pg_fingerprint(pg_server, tiny_db) == before


def test_refused_restore_tells_how_to_proceed(dbbackup_cli: Cli, tiny_db: str) -> None:
    made = dbbackup_cli.backup("--database", tiny_db)
    refused = dbbackup_cli.run("restore", made["id"])
    assert refused.returncode == 73, dbbackup_cli.describe(refused)
    assert "--clean" in refused.stdout + refused.stderr


# -- 74: I/O failure ------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_full_disk_exits_74_and_leaves_no_set(
    make_cli: MakeCli, pg_server: PostgresServer, busy_database: str, full_dir: Path
) -> None:
    cli = make_cli(pg_server, repo=full_dir / "repo")
    done = cli.run("backup", "--database", busy_database, "--compression", "none", timeout=150)
    assert done.returncode == 74, cli.describe(done)
    assert "no space left" in done.stderr
    assert cli.list_json() == []
    instance_dir = cli.repo / "default"
    leftovers = list(instance_dir.iterdir()) if instance_dir.exists() else []
    assert leftovers == []


# -- 75: temporary failure ------------------------------------------------------------------------


def test_instance_lock_held_elsewhere_exits_75(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, tmp_path: Path
) -> None:
    cli = make_cli(pg_server, backup={"lock_wait": "1s"})
    lock_path = tmp_path / "runtime" / "backup-default.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        begun = time.monotonic()
        done = cli.run("backup", "--database", tiny_db)
        assert done.returncode == 75, cli.describe(done)
        assert time.monotonic() - begun < 10
        assert "locked" in done.stderr
    finally:
        os.close(fd)
    assert cli.list_json() == []
    cli.backup("--database", tiny_db)


# -- 77: permission denied ------------------------------------------------------------------------


def test_repository_owned_by_another_user_exits_77(
    make_cli: MakeCli, pg_server: PostgresServer, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    repo = tmp_path / "foreign"
    repo.mkdir(mode=0o700)
    os.chown(repo, NOBODY_UID, NOBODY_UID)
    cli = make_cli(pg_server, repo=repo)
    done = cli.run("backup")
    assert done.returncode == 77, cli.describe(done)
    assert f"uid {NOBODY_UID}" in done.stderr
    assert str(repo) in done.stderr
    assert os.listdir(repo) == []


def test_world_writable_repository_exits_77(
    make_cli: MakeCli, pg_server: PostgresServer, tmp_path: Path
) -> None:
    repo = tmp_path / "open"
    repo.mkdir()
    repo.chmod(0o777)
    cli = make_cli(pg_server, repo=repo)
    done = cli.run("backup")
    assert done.returncode == 77, cli.describe(done)
    assert "0777" in done.stderr
    assert os.listdir(repo) == []


@pytest.mark.parametrize("password", ["not-the-password", ""], ids=["wrong", "missing"])
def test_bad_password_exits_77_naming_password_sources(
    make_cli: MakeCli, pg_server: PostgresServer, password: str
) -> None:
    cli = make_cli(pg_server, password=password)
    done = cli.run("backup")
    assert done.returncode == 77, cli.describe(done)
    for source in ("DBBACKUP_CONNECTION_PASSWORD", "PGPASSWORD", "pgpass"):
        assert source in done.stderr
    if password:
        assert password not in done.stderr


# -- 78: configuration errors ---------------------------------------------------------------------


def _line_of(path: Path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(number for number, line in enumerate(lines, start=1) if line.startswith(text))


def test_unknown_key_exits_78_naming_file_line_and_key(dbbackup_cli: Cli) -> None:
    dbbackup_cli.set("connection", "prot", 5432)
    done = dbbackup_cli.run("list")
    assert done.returncode == 78, dbbackup_cli.describe(done)
    line = _line_of(dbbackup_cli.config, "prot =")
    assert f"{dbbackup_cli.config}:{line}:" in done.stderr
    assert '"prot"' in done.stderr
    assert not dbbackup_cli.repo.exists()


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("backup", "compression", "zip"), ("connection", "connect_timeout", "soon"),
     ("backup", "jobs", 0), ("backup", "timezone", "Mars/Olympus_Mons")],
)  # fmt: skip
def test_bad_value_exits_78_naming_the_key(
    dbbackup_cli: Cli, section: str, key: str, value: str | int
) -> None:
    dbbackup_cli.set(section, key, value)
    done = dbbackup_cli.run("backup")
    assert done.returncode == 78, dbbackup_cli.describe(done)
    line = _line_of(dbbackup_cli.config, f"{key} =")
    assert f"{dbbackup_cli.config}:{line}:" in done.stderr
    assert f"{section}.{key}" in done.stderr


def test_bad_environment_value_exits_78_naming_the_variable(dbbackup_cli: Cli) -> None:
    done = dbbackup_cli.run("list", env={"DBBACKUP_BACKUP_JOBS": "many"})
    assert done.returncode == 78, dbbackup_cli.describe(done)
    assert "DBBACKUP_BACKUP_JOBS" in done.stderr


def test_missing_config_file_exits_78(dbbackup_cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    done = dbbackup_cli.run("--config", missing, "list")
    assert done.returncode == 78, dbbackup_cli.describe(done)
    assert str(missing) in done.stderr
