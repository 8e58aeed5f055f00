"""Huge values make the round trip byte for byte, and too-huge ones fail loudly.

PostgreSQL caps one value's text form at 1 GB, and COPY prints a row as text:
a 300 MB TEXT and a 300 MB BYTEA (600 MB as hex) must back up and restore
exactly; a 520 MB BYTEA (over 1 GB as hex) cannot be exported at all, and the
backup must say so, naming the table, and leave no set behind.

The peak memory (VmHWM) of each ``dbbackup`` process is printed (run with
``-s``) so that growth with value size shows up in the test log.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import PostgresServer, pg_fingerprint

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MIB = 1024 * 1024
HUGE_BYTES = 300 * MIB
RUN_TIMEOUT = 600.0

# Each unit of the text holds what COPY must escape (backslash, tab) and a
# two-byte character; the bytea repeats all 256 byte values.
HUGE_SQL = f"""
CREATE TABLE huge_text (id int PRIMARY KEY, body text NOT NULL);
INSERT INTO huge_text
  SELECT 1, repeat(md5('dbbackup') || E'\\\\\\tü', {HUGE_BYTES // 36 + 1});
CREATE TABLE huge_bytea (id int PRIMARY KEY, body bytea NOT NULL);
INSERT INTO huge_bytea
  SELECT 1, decode(repeat((SELECT string_agg(lpad(to_hex(b), 2, '0'), '' ORDER BY b)
                            FROM generate_series(0, 255) AS b), {HUGE_BYTES // 256 + 1}), 'hex');
CREATE TABLE many_large (id int PRIMARY KEY, body text NOT NULL);
INSERT INTO many_large
  SELECT g, repeat(md5(g::text), {10 * MIB // 32}) FROM generate_series(1, 30) AS g;
"""

DIGESTS_SQL = """
SELECT 'huge_text', count(*), sum(octet_length(body)), string_agg(md5(body), ',' ORDER BY id) FROM huge_text
UNION ALL
SELECT 'huge_bytea', count(*), sum(length(body)), string_agg(md5(body), ',' ORDER BY id) FROM huge_bytea
UNION ALL
SELECT 'many_large', count(*), sum(octet_length(body)), string_agg(md5(body), ',' ORDER BY id) FROM many_large
"""


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mib: float

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def _peak_rss_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process has had so far."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_measured(cli: Cli, args: Sequence[str], timeout: float = RUN_TIMEOUT) -> Measured:
    """Run dbbackup to completion and report its own peak resident memory.

    The exit status comes from ``wait4``, whose rusage holds the child's
    ``ru_maxrss``; /proc is polled too while it runs, as a cross-check.
    """
    proc = cli.popen(*args)
    captured: dict[str, str] = {}
    readers = [
        threading.Thread(target=lambda name=name, stream=stream: captured.update({name: stream.read()}))
        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    begun = time.monotonic()
    polled_kib = 0
    while True:
        polled_kib = max(polled_kib, _peak_rss_kib(proc.pid))
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() - begun > timeout:
            proc.kill()
            os.wait4(proc.pid, 0)
            pytest.fail(f"dbbackup {' '.join(args)} ran longer than {timeout:g} s")
        time.sleep(0.05)
    seconds = time.monotonic() - begun
    # Reaped here, not by Popen: tell it, so the fixture's cleanup does not wait again.
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join(30)
    return Measured(
        returncode=proc.returncode,
        stdout=captured.get("stdout", ""),
        stderr=captured.get("stderr", ""),
        seconds=seconds,
        peak_rss_mib=max(polled_kib, int(usage.ru_maxrss)) / 1024,
    )


def report(what: str, run: Measured, plain_bytes: int) -> None:
    print(
        f"\n[huge values] {what}: {run.seconds:.1f} s, peak RSS {run.peak_rss_mib:.0f} MiB,"
        f" {plain_bytes / MIB:.0f} MiB of values"
    )


def digests(server: PostgresServer, db: str) -> list[tuple[Any, ...]]:
    return server.query(DIGESTS_SQL, db)


def test_huge_text_and_bytea_round_trip_byte_for_byte(
    pg_server: PostgresServer, pg_database: str, make_cli: MakeCli, scratch_names: Callable[[str], str]
) -> None:
    pg_server.execute(HUGE_SQL, pg_database)
    before = digests(pg_server, pg_database)
    sizes = {row[0]: int(row[2]) for row in before}
    assert sizes["huge_text"] >= HUGE_BYTES and sizes["huge_bytea"] >= HUGE_BYTES
    assert sizes["many_large"] == 30 * 10 * MIB
    fingerprint = pg_fingerprint(pg_server, pg_database)

    cli = make_cli(pg_server)
    backup = run_measured(cli, ["backup", "--json", "--database", pg_database])
    assert backup.returncode == 0, backup.describe()
    report("backup", backup, sum(sizes.values()))
    set_id = json.loads(backup.stdout)["id"]

    target = scratch_names("huge")
    restore = run_measured(
        cli, ["restore", set_id, "--database", pg_database, "--target-db", target, "--json"]
    )
    assert restore.returncode == 0, restore.describe()
    report("restore", restore, sum(sizes.values()))
    # Restores stream in bounded chunks whatever the value size. (A backup
    # holds a whole row: libpq hands COPY data over one row at a time.)
    assert restore.peak_rss_mib < 256

    assert digests(pg_server, target) == before
    assert pg_fingerprint(pg_server, target) == fingerprint


@pytest.fixture(scope="module")
def too_wide_db(pg_server: PostgresServer) -> Iterator[str]:
    """520 MiB of bytea is 1040 MiB as hex: more than one COPY row may hold."""
    name = f"too_wide_{secrets.token_hex(6)}"
    pg_server.create_database(name)
    try:
        pg_server.execute(
            "CREATE TABLE small_neighbour AS SELECT g AS id FROM generate_series(1, 1000) AS g;"
            "CREATE TABLE too_wide (id int PRIMARY KEY, body bytea NOT NULL);"
            f"INSERT INTO too_wide SELECT 1, convert_to(repeat('ab', {260 * MIB}), 'SQL_ASCII');",
            name,
        )
        assert pg_server.query("SELECT length(body) FROM too_wide", name) == [(520 * MIB,)]
        yield name
    finally:
        pg_server.drop_database(name)


def test_bytea_beyond_the_text_limit_fails_the_backup_and_leaves_no_set(
    pg_server: PostgresServer, too_wide_db: str, make_cli: MakeCli
) -> None:
    cli = make_cli(pg_server)
    backup = run_measured(cli, ["backup", "--database", too_wide_db])
    report("backup refusing a 520 MiB bytea", backup, 520 * MIB)
    assert backup.returncode != 0, backup.describe()
    assert "public.too_wide" in backup.stderr, backup.describe()
    assert cli.list_json() == []
    instance_dir = cli.repo / "default"
    leftovers = sorted(p.name for p in instance_dir.iterdir()) if instance_dir.exists() else []
    assert leftovers == [], f"an incomplete set was left behind: {leftovers}"


def test_bytea_beyond_the_text_limit_is_reported_as_a_data_problem(
    pg_server: PostgresServer, too_wide_db: str, make_cli: MakeCli
) -> None:
    """Retrying cannot help, so not 74: 65 and a hint that says what to do about the value."""
    done = make_cli(pg_server).run("backup", "--database", too_wide_db, timeout=RUN_TIMEOUT)
    assert done.returncode == 65, done.stderr
    assert "1 GB" in done.stderr, done.stderr
