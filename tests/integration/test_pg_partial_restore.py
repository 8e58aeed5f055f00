"""Partial cluster restores: one failing database, subsets, reports, --resume, --dry-run.

The failure is real: the target server already holds a non-empty database of
the same name, which dbbackup refuses to merge into (exit 73 for it).
"""

from __future__ import annotations

import json
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli, MakeCli, fill_tiny
from harness import PostgresServer, pg_fingerprint

from dbbackup.errors import EX_CANTCREAT, EX_DATAERR, EX_OK

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cluster(pg_server: PostgresServer) -> Iterator[list[str]]:
    """Three small databases with distinct contents, dropped afterwards."""
    names = [f"part_{tag}_{secrets.token_hex(4)}" for tag in ("a", "b", "c")]
    for index, name in enumerate(names):
        pg_server.create_database(name)
        fill_tiny(pg_server, name, rows=20 + index)
    yield names
    for name in names:
        pg_server.drop_database(name)


def backup_of(cli: Cli, names: list[str]) -> str:
    args = [arg for name in names for arg in ("--database", name)]
    return str(cli.backup(*args)["id"])


def sabotage(server: PostgresServer, name: str) -> None:
    """Make ``name`` exist non-empty on the target, so restoring it must fail."""
    server.drop_database(name)
    server.create_database(name)
    server.execute("CREATE TABLE squatter (x int)", dbname=name)


def test_continue_on_error_restores_the_rest_and_reports_each(
    make_cli: MakeCli, pg_server: PostgresServer, cluster: list[str]
) -> None:
    cli = make_cli(pg_server)
    set_id = backup_of(cli, cluster)
    expected = {name: pg_fingerprint(pg_server, name) for name in cluster}
    first, middle, last = cluster
    pg_server.drop_database(first)
    pg_server.drop_database(last)
    sabotage(pg_server, middle)
    done = cli.run("restore", set_id, "--continue-on-error", "--json", "--jobs", "1")
    assert done.returncode == EX_CANTCREAT, cli.describe(done)
    report = json.loads(done.stdout)
    status = {entry["database"]: entry for entry in report["databases"]}
    assert status[first]["status"] == "restored"
    assert status[last]["status"] == "restored"
    assert status[middle]["status"] == "failed"
    assert "not empty" in status[middle]["reason"]
    assert report["ok"] is False
    assert pg_fingerprint(pg_server, first) == expected[first]
    assert pg_fingerprint(pg_server, last) == expected[last]


def test_without_continue_on_error_the_rest_is_skipped(
    make_cli: MakeCli, pg_server: PostgresServer, cluster: list[str]
) -> None:
    cli = make_cli(pg_server)
    set_id = backup_of(cli, cluster)
    first, middle, last = cluster
    sabotage(pg_server, first)
    done = cli.run("restore", set_id, "--jobs", "1")
    assert done.returncode == EX_CANTCREAT, cli.describe(done)
    assert "FAILED" in done.stdout
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("part_")}
    assert "SKIPPED" in lines[middle] and "SKIPPED" in lines[last]


def test_subset_restores_only_the_named_databases(
    make_cli: MakeCli, pg_server: PostgresServer, cluster: list[str]
) -> None:
    cli = make_cli(pg_server)
    set_id = backup_of(cli, cluster)
    first, middle, last = cluster
    for name in cluster:
        pg_server.drop_database(name)
    report = json.loads(cli.ok("restore", set_id, "-d", first, "-d", last, "--json").stdout)
    assert [entry["database"] for entry in report["databases"]] == [first, last]
    present = {row[0] for row in pg_server.query("SELECT datname FROM pg_database")}
    assert first in present and last in present and middle not in present


def test_dry_run_prints_the_plan_and_touches_nothing(
    make_cli: MakeCli, pg_server: PostgresServer, cluster: list[str]
) -> None:
    cli = make_cli(pg_server)
    set_id = backup_of(cli, cluster)
    for name in cluster:
        pg_server.drop_database(name)
    report = json.loads(cli.ok("restore", set_id, "--dry-run", "--json").stdout)
    assert report["dry_run"] is True
    assert {entry["status"] for entry in report["databases"]} == {"planned"}
    present = {row[0] for row in pg_server.query("SELECT datname FROM pg_database")}
    assert not present & set(cluster)


def test_resume_skips_finished_databases_and_redoes_the_rest(
    make_cli: MakeCli, pg_server: PostgresServer, cluster: list[str]
) -> None:
    cli = make_cli(pg_server)
    set_id = backup_of(cli, cluster)
    expected = {name: pg_fingerprint(pg_server, name) for name in cluster}
    first, middle, last = cluster
    for name in cluster:
        pg_server.drop_database(name)
    sabotage(pg_server, middle)
    partial = cli.run("restore", set_id, "--continue-on-error", "--jobs", "1")
    assert partial.returncode == EX_CANTCREAT
    pg_server.drop_database(middle)  # the operator clears the obstacle
    resumed = cli.run("restore", set_id, "--resume", "--json", "--jobs", "1")
    assert resumed.returncode == EX_OK, cli.describe(resumed)
    status = {e["database"]: e["status"] for e in json.loads(resumed.stdout)["databases"]}
    assert status == {first: "skipped", middle: "restored", last: "skipped"}
    for name in cluster:
        assert pg_fingerprint(pg_server, name) == expected[name]


def backed_up_wide_table(
    make_cli: MakeCli, server: PostgresServer, dbname: str, *, rows: int, width: int
) -> tuple[Cli, str]:
    """One table ``wide`` of ``rows`` rows of ``width`` x 32 characters, and a set holding it."""
    server.execute(
        f"CREATE TABLE wide AS SELECT g AS id, repeat(md5(g::text), {int(width)}) AS payload "
        f"FROM generate_series(1, {int(rows)}) g; ALTER TABLE wide ADD PRIMARY KEY (id);",
        dbname=dbname,
    )
    cli = make_cli(server)
    return cli, str(cli.backup("--database", dbname)["id"])


def test_resume_redoes_a_database_an_earlier_run_left_half_done(
    make_cli: MakeCli, pg_server: PostgresServer, pg_database: str, scratch_names
) -> None:  # type: ignore[no-untyped-def]
    cli, set_id = backed_up_wide_table(make_cli, pg_server, pg_database, rows=50_000, width=4)
    data_object = max(cli.set_dir(set_id).glob("*/data/*.copy.zst"), key=lambda p: p.stat().st_size)
    original = data_object.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    data_object.write_bytes(bytes(damaged))
    target = scratch_names("half_done")
    first = cli.run("restore", set_id, "-d", pg_database, "--target-db", target, "--json")
    assert first.returncode == EX_DATAERR, cli.describe(first)
    # The schema went in before the damaged rows were found: the target exists, not empty.
    assert (
        pg_server.query("SELECT count(*) FROM pg_tables WHERE tablename = 'wide'", dbname=target)[0][0] == 1
    )
    assert pg_server.query("SELECT count(*) FROM wide", dbname=target)[0][0] == 0
    data_object.write_bytes(original)
    plain = cli.run("restore", set_id, "-d", pg_database, "--target-db", target)
    assert plain.returncode == EX_CANTCREAT, "without --resume the half-done target must be refused"
    resumed = cli.run("restore", set_id, "-d", pg_database, "--target-db", target, "--resume", "--json")
    assert resumed.returncode == EX_OK, cli.describe(resumed)
    assert json.loads(resumed.stdout)["databases"][0]["status"] == "restored"
    assert pg_fingerprint(pg_server, target) == pg_fingerprint(pg_server, pg_database)


def test_sigterm_stops_a_restore_promptly_and_it_is_not_marked_done(
    make_cli: MakeCli, pg_server: PostgresServer, pg_database: str, scratch_names, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cli, set_id = backed_up_wide_table(make_cli, pg_server, pg_database, rows=800_000, width=8)
    target = scratch_names("stopped")
    proc = cli.popen("restore", set_id, "-d", pg_database, "--target-db", target, "--jobs", "1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if pg_server.query("SELECT count(*) FROM pg_database WHERE datname = %s", params=(target,))[0][0]:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the restore ended before it could be stopped: {proc.communicate()}")
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - stopped_at < 10
    state = json.loads(next((tmp_path / "state").rglob("*.json")).read_text())
    assert state["databases"][target] == "started"
    resumed = cli.run("restore", set_id, "-d", pg_database, "--target-db", target, "--resume")
    assert resumed.returncode == EX_OK, cli.describe(resumed)
    assert pg_fingerprint(pg_server, target) == pg_fingerprint(pg_server, pg_database)


def test_cluster_restore_keeps_the_connecting_roles_password(make_cli: MakeCli) -> None:
    """A new server's superuser password must survive restoring the old server's roles."""
    server = PostgresServer()
    server.start()
    try:
        server.execute("CREATE ROLE app_login LOGIN PASSWORD 'app-secret-1'")
        cli = make_cli(server)
        set_id = str(cli.backup("--all")["id"])
        # As on a rebuilt host: same roles to come, but the admin has a new password.
        new_password = "rebuilt-host-" + secrets.token_hex(8)
        server.execute(f"ALTER ROLE postgres PASSWORD '{new_password}'")
        server.password = new_password
        server.execute("DROP ROLE app_login")
        done = cli.run("restore", set_id, "--all", "--clean", env={"PGPASSWORD": new_password})
        assert done.returncode == EX_OK, cli.describe(done)
        assert server.query("SELECT 1")[0][0] == 1  # the admin still logs in with the new password
        roles = server.query("SELECT rolname FROM pg_roles WHERE rolname = 'app_login'")
        assert roles == [("app_login",)]
    finally:
        server.stop()
