"""Hooks around backups and restores, and one backup per instance at a time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import Cli, MakeCli
from harness import PostgresServer

from dbbackup.errors import EX_FAILURE, EX_NOINPUT, EX_OK, EX_TEMPFAIL

pytestmark = pytest.mark.timeout(180)


def env_dump_hook(target: Path) -> list[str]:
    return ["/bin/sh", "-c", f"env | grep '^DBBACKUP_' | sort > {target}"]


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_hooks_see_the_run_and_its_result(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, tmp_path: Path
) -> None:
    before, success, after = tmp_path / "before.env", tmp_path / "success.env", tmp_path / "after.env"
    cli = make_cli(
        pg_server,
        hooks={
            "before_backup": env_dump_hook(before),
            "on_success": env_dump_hook(success),
            "after_backup": env_dump_hook(after),
            "on_failure": ["/bin/sh", "-c", f"touch {tmp_path / 'failure-ran'}"],
        },
    )
    summary = cli.backup("--database", tiny_db)
    seen_before = read_env(before)
    assert seen_before["DBBACKUP_HOOK"] == "before_backup"
    assert seen_before["DBBACKUP_INSTANCE"] == "default"
    assert seen_before["DBBACKUP_DATABASES"] == tiny_db
    assert "DBBACKUP_SET_ID" not in seen_before
    seen_success = read_env(success)
    assert seen_success["DBBACKUP_SET_ID"] == summary["id"]
    assert seen_success["DBBACKUP_STATUS"] == "success"
    assert read_env(after)["DBBACKUP_EXIT_CODE"] == "0"
    assert not (tmp_path / "failure-ran").exists()


def test_failure_hooks_get_the_error_and_exit_code(
    make_cli: MakeCli, pg_server: PostgresServer, tmp_path: Path
) -> None:
    failure = tmp_path / "failure.env"
    cli = make_cli(pg_server, hooks={"on_failure": env_dump_hook(failure)})
    done = cli.run("backup", "--database", "no_such_database_here")
    assert done.returncode == EX_NOINPUT, cli.describe(done)
    seen = read_env(failure)
    assert seen["DBBACKUP_STATUS"] == "failure"
    assert seen["DBBACKUP_EXIT_CODE"] == str(EX_NOINPUT)
    assert "no_such_database_here" in seen["DBBACKUP_ERROR"]


def test_failing_before_hook_aborts_without_a_set(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    cli = make_cli(pg_server, hooks={"before_backup": ["/bin/sh", "-c", "echo quiesce failed >&2; exit 3"]})
    done = cli.run("backup", "--database", tiny_db)
    assert done.returncode == EX_FAILURE, cli.describe(done)
    assert "before_backup hook failed" in done.stderr
    assert "quiesce failed" in done.stderr
    assert cli.list_json() == []


def test_hook_past_its_timeout_is_killed(make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str) -> None:
    cli = make_cli(pg_server, hooks={"before_backup": ["/bin/sleep", "60"], "timeout": "2s"})
    started = time.monotonic()
    done = cli.run("backup", "--database", tiny_db)
    assert done.returncode == EX_FAILURE, cli.describe(done)
    assert time.monotonic() - started < 30
    assert "before_backup hook" in done.stderr


def test_restore_hooks_run(make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, tmp_path: Path,
                           scratch_names) -> None:  # type: ignore[no-untyped-def]
    after = tmp_path / "after-restore.env"
    cli = make_cli(pg_server, hooks={"after_restore": env_dump_hook(after)})
    summary = cli.backup("--database", tiny_db)
    target = scratch_names("hooked")
    cli.ok("restore", summary["id"], "--database", tiny_db, "--target-db", target)
    seen = read_env(after)
    assert seen["DBBACKUP_STATUS"] == "success"
    assert seen["DBBACKUP_SET_ID"] == summary["id"]


def hold_lock(
    make_cli: MakeCli, server: PostgresServer, cli: Cli, tiny_db: str, seconds: int, instance: str = "default"
) -> None:
    """Start a backup of ``instance`` (same repository and runtime dir as ``cli``) that sits
    in its before hook, holding the instance lock."""
    holder = make_cli(server, repo=cli.repo, hooks={"before_backup": ["/bin/sleep", str(seconds)]})
    holder.popen("--instance", instance, "backup", "--database", tiny_db)
    time.sleep(2.0)  # let it take the lock before the contender starts


def test_second_backup_of_an_instance_waits_then_exits_75(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    cli = make_cli(pg_server, backup={"lock_wait": "2s"})
    hold_lock(make_cli, pg_server, cli, tiny_db, 20)
    started = time.monotonic()
    done = cli.run("backup", "--database", tiny_db)
    assert done.returncode == EX_TEMPFAIL, cli.describe(done)
    assert 1.5 <= time.monotonic() - started < 15
    assert "locked by another dbbackup process" in done.stderr


def test_other_instances_run_while_one_is_locked(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    cli = make_cli(pg_server, backup={"lock_wait": "1s"})
    hold_lock(make_cli, pg_server, cli, tiny_db, 20, instance="first")
    done = cli.run("--instance", "second", "backup", "--database", tiny_db)
    assert done.returncode == EX_OK, cli.describe(done)


def test_waiting_backup_proceeds_once_the_lock_is_free(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    cli = make_cli(pg_server, backup={"lock_wait": "60s"})
    hold_lock(make_cli, pg_server, cli, tiny_db, 4)
    done = cli.run("backup", "--database", tiny_db)
    assert done.returncode == EX_OK, cli.describe(done)
    assert len(cli.list_json()) == 2
