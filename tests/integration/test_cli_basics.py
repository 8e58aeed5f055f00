"""The command line as users and scripts meet it: help, version, catalog, time zones, logs."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from harness import PostgresServer
from psycopg import sql

from dbbackup import __version__

if TYPE_CHECKING:
    from conftest import Cli, MakeCli, RunCli

pytestmark = pytest.mark.timeout(120)

SUBCOMMANDS = ("backup", "restore", "verify", "list", "show", "config", "catalog")
SUMMARY_FIELDS = {
    "id", "kind", "engine", "databases", "started_at", "finished_at", "stored_bytes", "encrypted",
}  # fmt: skip
OFFSET_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d$")


# -- help and version --------------------------------------------------------------------


def test_version_prints_the_package_version(run_dbbackup: RunCli) -> None:
    done = run_dbbackup("--version", timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dbbackup, version {__version__}"


def test_help_lists_every_command_and_the_exit_codes(run_dbbackup: RunCli) -> None:
    done = run_dbbackup("--help", timeout=30)
    assert done.returncode == 0, done.stderr
    for command in SUBCOMMANDS:
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE), command
    assert "78 configuration error" in " ".join(done.stdout.split())


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(run_dbbackup: RunCli, command: str) -> None:
    done = run_dbbackup(command, "--help", timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: dbbackup {command} ")
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("words", "expected"),
    [(("config", "show"), "--sources"), (("catalog", "rebuild"), "manifests"),
     (("catalog", "sync"), "vanished")],
)  # fmt: skip
def test_nested_commands_have_help(run_dbbackup: RunCli, words: tuple[str, ...], expected: str) -> None:
    done = run_dbbackup(*words, "--help", timeout=30)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout


# -- the catalog is a cache of the manifests ---------------------------------------------------


def _catalog_files(repo: Path) -> list[Path]:
    return [repo / "catalog.sqlite", repo / "catalog.sqlite-wal", repo / "catalog.sqlite-shm"]


def test_list_json_has_the_documented_fields(dbbackup_cli: Cli, tiny_db: str) -> None:
    made = dbbackup_cli.backup("--database", tiny_db)
    listed = dbbackup_cli.list_json()
    assert [s["id"] for s in listed] == [made["id"]]
    entry = listed[0]
    assert entry.keys() >= SUMMARY_FIELDS
    assert entry["kind"] == "full"
    assert entry["engine"] == "postgres"
    assert entry["databases"] == [tiny_db]
    assert entry["encrypted"] is False
    assert isinstance(entry["stored_bytes"], int) and entry["stored_bytes"] > 0
    assert OFFSET_TIME.match(entry["started_at"]) and OFFSET_TIME.match(entry["finished_at"])
    assert entry == made


def test_deleted_catalog_is_synced_on_list_and_rebuilt(dbbackup_cli: Cli, tiny_db: str) -> None:
    first = dbbackup_cli.backup("--database", tiny_db)
    second = dbbackup_cli.backup("--database", tiny_db)
    ids = sorted([first["id"], second["id"]])

    for path in _catalog_files(dbbackup_cli.repo):
        path.unlink(missing_ok=True)
    assert sorted(s["id"] for s in dbbackup_cli.list_json()) == ids
    assert (dbbackup_cli.repo / "catalog.sqlite").is_file()

    for path in _catalog_files(dbbackup_cli.repo):
        path.unlink(missing_ok=True)
    rebuilt = dbbackup_cli.ok("catalog", "rebuild")
    assert "2 set(s)" in rebuilt.stdout
    assert sorted(s["id"] for s in dbbackup_cli.list_json()) == ids


def test_sync_forgets_a_set_whose_directory_vanished(dbbackup_cli: Cli, tiny_db: str) -> None:
    kept = dbbackup_cli.backup("--database", tiny_db)
    gone = dbbackup_cli.backup("--database", tiny_db)
    manifest = dbbackup_cli.set_dir(gone["id"]) / "manifest.json"
    manifest.unlink()
    synced = dbbackup_cli.ok("catalog", "sync")
    assert "1 removed" in synced.stdout
    assert [s["id"] for s in dbbackup_cli.list_json()] == [kept["id"]]


# -- time zones in set names and times --------------------------------------------------------


def _zone_available(name: str) -> bool:
    try:
        ZoneInfo(name)
    except ZoneInfoNotFoundError:
        return False
    return True


@pytest.mark.parametrize(
    ("zone", "env_tz", "id_offset", "iso_offset"),
    [
        ("utc", "Asia/Tokyo", "+0000", "+00:00"),
        ("Asia/Kolkata", "UTC", "+0530", "+05:30"),
        ("local", "Asia/Kathmandu", "+0545", "+05:45"),
    ],
)
def test_set_id_and_times_carry_the_configured_offset(
    make_cli: MakeCli,
    pg_server: PostgresServer,
    tiny_db: str,
    zone: str,
    env_tz: str,
    id_offset: str,
    iso_offset: str,
) -> None:
    for name in (zone, env_tz):
        if name not in ("utc", "local", "UTC") and not _zone_available(name):
            pytest.skip(f"time zone {name} is not installed (tzdata)")
    cli = make_cli(pg_server, backup={"timezone": zone}, env={"TZ": env_tz})
    made = cli.backup("--database", tiny_db)
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}{re.escape(id_offset)}-full-[0-9a-f]{{8}}", made["id"])
    shown = json.loads(cli.ok("show", made["id"], "--json").stdout)
    assert shown["started_at"].endswith(iso_offset), shown["started_at"]
    assert shown["finished_at"].endswith(iso_offset), shown["finished_at"]
    assert shown["timezone"] == zone


# -- logging and secrets ----------------------------------------------------------------------


@pytest.fixture
def secret_role(pg_server: PostgresServer) -> Iterator[tuple[str, str]]:
    """A superuser role with a distinctive password, dropped afterwards."""
    role = f"dbb_logger_{secrets.token_hex(4)}"
    password = f"Pw-{secrets.token_hex(12)}-zebra"
    pg_server.execute(
        sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )
    try:
        yield role, password
    finally:
        pg_server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


class CommandLineSampler:
    """Collects ``ps -eo args`` snapshots in a thread until stopped."""

    def __init__(self) -> None:
        self.samples: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            done = subprocess.run(
                ["ps", "-eo", "args"], capture_output=True, text=True, timeout=10, check=False
            )
            self.samples.append(done.stdout)
            time.sleep(0.01)

    def __enter__(self) -> CommandLineSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def _json_lines(stderr: str) -> list[dict[str, object]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line is not JSON: {line!r}")
    return parsed


@pytest.mark.timeout(180)
@pytest.mark.parametrize("source", ["DBBACKUP_CONNECTION_PASSWORD", "PGPASSWORD"])
def test_json_logs_and_child_command_lines_never_show_the_password(
    make_cli: MakeCli,
    pg_server: PostgresServer,
    busy_database: str,
    secret_role: tuple[str, str],
    source: str,
) -> None:
    role, password = secret_role
    cli = make_cli(pg_server, user=role, password="", env={source: password})
    with CommandLineSampler() as sampler:
        proc = cli.popen(
            "--log-format", "json", "--log-level", "debug",
            "backup", "--database", busy_database, "--jobs", "1", "--compression", "gzip",
        )  # fmt: skip
        stdout, stderr = proc.communicate(timeout=150)
    assert proc.returncode == 0, stderr
    # The sampling overlapped the client tools, or it proves nothing.
    assert any("pg_dump" in sample for sample in sampler.samples)
    leaks = [sample for sample in sampler.samples if password in sample]
    assert not leaks, "the password appeared on a command line"
    assert password not in stdout
    assert password not in stderr

    records = _json_lines(stderr)
    assert records, "no log lines"
    for record in records:
        assert OFFSET_TIME.match(str(record["time"])), record
        assert record["level"] in ("debug", "info", "warning", "error")
        assert isinstance(record["message"], str) and record["message"]
        assert record["instance"] == "default"
    finished = [r for r in records if r.get("event") == "backup_succeeded"]
    assert len(finished) == 1
    set_id = json.loads(cli.ok("list", "--json").stdout)[0]["id"]
    assert finished[0]["backup_id"] == set_id
    assert all(r["backup_id"] == set_id for r in records if r.get("event") == "database_backed_up")
