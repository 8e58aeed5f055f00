"""Under systemd (stderr is the journal stream) a run's records are journal entries with fields.

``journalctl -u dbbackup@main DBBACKUP_EVENT=backup_failed`` must find a failed backup.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import DBBACKUP_ARGV, MakeCli, clean_environment
from harness import PostgresServer
from harness.journal import drain, fake_journal

pytestmark = pytest.mark.timeout(120)


def run_under_journal(cli_config: Path, env: dict[str, str], tmp_path: Path, *args: str) -> int:
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        st = os.fstat(stderr.fileno())
        env = {**env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        done = subprocess.run(
            [*DBBACKUP_ARGV, "--config", str(cli_config), *args],
            env=clean_environment(env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=stderr, timeout=90, check=False,
        )
    return done.returncode


def test_backup_records_are_journal_entries_with_fields(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, tmp_path: Path
) -> None:
    cli = make_cli(pg_server)
    with fake_journal() as journal:
        assert run_under_journal(cli.config, cli.env, tmp_path, "backup", "--database", tiny_db) == 0
        entries = drain(journal)
    events = {e.get("DBBACKUP_EVENT") for e in entries}
    assert {"backup_started", "database_backed_up", "backup_succeeded"} <= events, entries
    done = next(e for e in entries if e.get("DBBACKUP_EVENT") == "backup_succeeded")
    assert done["DBBACKUP_INSTANCE"] == "default"
    assert done["DBBACKUP_BACKUP_ID"]
    assert float(done["DBBACKUP_DURATION_SEC"]) >= 0
    assert done["PRIORITY"] == "6"
    per_db = next(e for e in entries if e.get("DBBACKUP_EVENT") == "database_backed_up")
    assert per_db["DBBACKUP_DATABASE"] == tiny_db
    assert all(e["SYSLOG_IDENTIFIER"] == "dbbackup" for e in entries)


def test_failed_backup_is_findable_by_event(
    make_cli: MakeCli, pg_server: PostgresServer, tmp_path: Path
) -> None:
    cli = make_cli(pg_server)
    with fake_journal() as journal:
        code = run_under_journal(cli.config, cli.env, tmp_path, "backup", "--database", "missing_db_x")
        entries = drain(journal)
    assert code == 66
    failed = [e for e in entries if e.get("DBBACKUP_EVENT") == "backup_failed"]
    assert failed, entries
    assert failed[0]["PRIORITY"] == "3"
    assert failed[0]["DBBACKUP_EXIT_CODE"] == "66"
    assert "missing_db_x" in failed[0]["MESSAGE"]
