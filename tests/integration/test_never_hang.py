"""Nothing waits forever: frozen networks, transaction poolers and missing passwords fail fast.

Every failure here is caused for real: a TCP proxy that stops forwarding, a
real PgBouncer in transaction mode, a run without any password source.
"""

from __future__ import annotations

import time

import pytest
from conftest import MakeCli
from harness import CuttingProxy, PgBouncer, PostgresServer, pg_fingerprint

from dbbackup.errors import EX_NOPERM, EX_OK, EX_UNAVAILABLE

pytestmark = pytest.mark.timeout(180)


def test_frozen_server_fails_within_the_connect_timeout(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, cutting_proxy
) -> None:  # type: ignore[no-untyped-def]
    proxy: CuttingProxy = cutting_proxy(pg_server.host, pg_server.port)
    proxy.freeze()
    cli = make_cli(pg_server, port=proxy.port, connection={"connect_timeout": "3s"})
    started = time.monotonic()
    done = cli.run("backup", "--database", tiny_db, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == EX_UNAVAILABLE, cli.describe(done)
    assert elapsed < 15, elapsed
    assert "timeout" in done.stderr.lower()


def test_network_freezing_mid_backup_is_cut_by_the_stall_timeout(
    make_cli: MakeCli, pg_server: PostgresServer, busy_database: str, cutting_proxy
) -> None:  # type: ignore[no-untyped-def]
    proxy: CuttingProxy = cutting_proxy(pg_server.host, pg_server.port)
    cli = make_cli(
        pg_server,
        port=proxy.port,
        connection={"stall_timeout": "3s", "connect_timeout": "3s"},
        backup={"jobs": 1},
    )
    proc = cli.popen("backup", "--database", busy_database)
    deadline = time.monotonic() + 30
    while proxy.bytes_from_server < 2_000_000 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the backup finished before the network could freeze"
    frozen_at = time.monotonic()
    proxy.freeze()
    _out, err = proc.communicate(timeout=90)
    waited = time.monotonic() - frozen_at
    assert proc.returncode == EX_UNAVAILABLE, err
    assert waited < 30, waited
    assert "no data moved for 3 s" in err
    assert cli.list_json() == []
    assert not any(cli.repo.joinpath("default").glob("*/manifest.json"))


def test_transaction_pooler_is_named_and_refused_fast(
    make_cli: MakeCli, pg_server: PostgresServer, pg_bouncer: PgBouncer, tiny_db: str
) -> None:
    cli = make_cli(pg_server, port=pg_bouncer.port, connection={"connect_timeout": "10s"})
    started = time.monotonic()
    backup = cli.run("backup", "--database", tiny_db)
    assert backup.returncode == EX_UNAVAILABLE, cli.describe(backup)
    assert time.monotonic() - started < 10
    assert "PgBouncer" in backup.stderr
    assert "connection.direct_host" in backup.stderr
    restore = cli.run("restore", "latest", "--database", tiny_db)
    assert restore.returncode != EX_OK
    assert cli.list_json() == []


def test_pooler_with_direct_address_backs_up_and_restores(
    make_cli: MakeCli, pg_server: PostgresServer, pg_bouncer: PgBouncer, tiny_db: str, scratch_names
) -> None:  # type: ignore[no-untyped-def]
    cli = make_cli(
        pg_server,
        port=pg_bouncer.port,
        connection={"direct_host": pg_server.host, "direct_port": pg_server.port},
    )
    backup = cli.ok("backup", "--database", tiny_db)
    assert "PgBouncer" in backup.stderr and "direct address" in backup.stderr
    target = scratch_names("via_pooler")
    cli.ok("restore", "latest", "--database", tiny_db, "--target-db", target, "--jobs", "2")
    assert pg_fingerprint(pg_server, tiny_db) == pg_fingerprint(pg_server, target)


def test_missing_password_fails_at_once_without_prompting(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    cli = make_cli(pg_server, password="")
    cli.env.pop("PGPASSWORD", None)
    started = time.monotonic()
    done = cli.run("backup", "--database", tiny_db, timeout=30)
    assert done.returncode == EX_NOPERM, cli.describe(done)
    assert time.monotonic() - started < 10
    assert "DBBACKUP_CONNECTION_PASSWORD" in done.stderr
