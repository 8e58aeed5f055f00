"""What a backup leaves behind besides its set: run history, metrics, verify results, retention."""

from __future__ import annotations

import re

import pytest
from conftest import MakeCli
from harness import PostgresServer

pytestmark = pytest.mark.timeout(180)


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_runs_and_verifications_show_in_metrics(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    cli = make_cli(pg_server)
    cli.backup("--database", tiny_db)
    failed = cli.run("backup", "--database", "no_such_db_for_metrics")
    assert failed.returncode == 66
    cli.ok("verify", "latest")
    text = cli.ok("metrics").stdout
    assert metric(text, "dbbackup_backups_total", instance="default", database=tiny_db, result="success") == 1
    failures = [
        line for line in text.splitlines()
        if line.startswith("dbbackup_backups_total{") and 'result="failure"' in line
    ]
    assert failures and sum(float(line.rsplit(" ", 1)[1]) for line in failures) == 1, text
    assert metric(text, "dbbackup_last_success_timestamp_seconds", database=tiny_db) is not None
    assert metric(text, "dbbackup_verify_last_success_timestamp_seconds", database=tiny_db) is not None


def test_auto_cleanup_applies_retention_after_each_backup(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    cli = make_cli(pg_server, retention={"keep_last": 2, "auto_cleanup": True})
    ids = [cli.backup("--database", tiny_db)["id"] for _ in range(3)]
    kept = [s["id"] for s in cli.list_json()]
    assert kept == ids[1:]
    assert not cli.set_dir(ids[0]).exists()
