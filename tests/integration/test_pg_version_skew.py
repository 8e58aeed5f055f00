"""A set from a newer PostgreSQL major version is refused before the target is touched."""

from __future__ import annotations

import json

import pytest
from conftest import MakeCli
from harness import PostgresServer

from dbbackup.errors import EX_UNAVAILABLE

pytestmark = pytest.mark.timeout(120)


def test_set_from_newer_major_is_refused_before_touching_the_target(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, scratch_names
) -> None:  # type: ignore[no-untyped-def]
    cli = make_cli(pg_server)
    set_id = cli.backup("--database", tiny_db)["id"]
    manifest_path = cli.set_dir(set_id) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["server_version_num"] == pg_server.version
    # As if the set had been taken on the next major version.
    manifest["server_version_num"] = (pg_server.version // 10000 + 1) * 10000 + 2
    manifest_path.write_text(json.dumps(manifest))
    target = scratch_names("newer")
    done = cli.run("restore", set_id, "--database", tiny_db, "--target-db", target)
    assert done.returncode == EX_UNAVAILABLE, cli.describe(done)
    assert "older major version" in done.stderr
    exists = pg_server.query("SELECT count(*) FROM pg_database WHERE datname = %s", params=(target,))
    assert exists[0][0] == 0


def test_manifest_records_versions(make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str) -> None:
    cli = make_cli(pg_server)
    set_id = cli.backup("--database", tiny_db)["id"]
    manifest = json.loads(cli.ok("show", set_id, "--json").stdout)
    assert manifest["server_version_num"] == pg_server.version
    assert manifest["tools_major"] == pg_server.version // 10000
