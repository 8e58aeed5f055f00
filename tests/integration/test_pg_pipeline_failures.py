"""Damage and dying processes anywhere in the pipeline fail loudly, never half-way silently.

Stored objects are cut short, replaced by another set's object of the same
name, or swapped inside a set: ``verify`` and ``restore`` exit 65 and name the
object, and damaged rows never land. A ``pg_dump`` killed mid-stream, a COPY
session terminated by the server, or a ``pg_restore`` killed mid-run make the
run exit non-zero and leave no complete-looking set (backup) or report the
database as failed (restore).

To hit a child *mid-stream* every time, dbbackup is frozen with SIGSTOP once
the child is seen: the child then blocks on its full output pipe (or the
server on its full socket), so it is certainly still streaming when it is
killed. dbbackup is thawed right after and must notice.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import PostgresServer, pg_fingerprint
from harness.process import descendants, pid_alive

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = pytest.mark.timeout(180)

RUN_TIMEOUT = 120.0
FIND_TIMEOUT = 60.0


def describe(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"


# -- stored objects ---------------------------------------------------------------------------


def manifest_of(cli: Cli, set_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((cli.set_dir(set_id) / "manifest.json").read_text(encoding="utf-8"))
    return data


def table_objects(cli: Cli, set_id: str) -> dict[str, dict[str, Any]]:
    """The set's table-data objects by ``schema.table``."""
    found = {}
    for database in manifest_of(cli, set_id)["databases"]:
        for obj in database["objects"]:
            if obj["role"] == "table-data":
                found[f"{obj['table']['schema']}.{obj['table']['name']}"] = obj
    return found


def stored_path(cli: Cli, set_id: str, obj: dict[str, Any]) -> Path:
    return cli.set_dir(set_id) / str(obj["key"])


def database_exists(server: PostgresServer, name: str) -> bool:
    return bool(server.query("SELECT 1 FROM pg_database WHERE datname = %s", params=(name,)))


def restore_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture
def target(scratch_names: Callable[[str], str]) -> str:
    return scratch_names("damaged")


def test_object_cut_short_fails_verify_and_restore_before_the_target_exists(
    pg_server: PostgresServer, tiny_db: str, make_cli: MakeCli, target: str
) -> None:
    cli = make_cli(pg_server)
    set_id = cli.backup("--database", tiny_db)["id"]
    obj = table_objects(cli, set_id)["public.t"]
    path = stored_path(cli, set_id, obj)
    assert path.stat().st_size == obj["stored_bytes"] > 16
    with path.open("r+b") as handle:
        handle.truncate(obj["stored_bytes"] - 7)

    for mode in ((), ("--quick",), ("--deep",)):
        done = cli.run("verify", set_id, *mode)
        assert done.returncode == 65, describe(done)
        assert obj["key"] in done.stderr, describe(done)

    done = cli.run("restore", set_id, "--database", tiny_db, "--target-db", target, timeout=RUN_TIMEOUT)
    assert done.returncode == 65, describe(done)
    assert obj["key"] in done.stderr, describe(done)
    assert not database_exists(pg_server, target)


SAME_SIZE_SQL = """
CREATE TABLE t1 (id int PRIMARY KEY, label text NOT NULL);
CREATE TABLE t2 (id int PRIMARY KEY, label text NOT NULL);
INSERT INTO t1 SELECT g, 'aaaa' FROM generate_series(1, 100) AS g;
INSERT INTO t2 SELECT g, 'bbbb' FROM generate_series(1, 100) AS g;
"""


def assert_damage_refused(
    server: PostgresServer, cli: Cli, set_id: str, source: str, target: str, damaged: list[str]
) -> None:
    """verify and restore both exit 65 naming a damaged object; no foreign row reaches a table."""
    done = cli.run("verify", set_id)
    assert done.returncode == 65, describe(done)
    assert any(key in done.stderr for key in damaged), describe(done)
    done = cli.run("restore", set_id, "--database", source, "--target-db", target, timeout=RUN_TIMEOUT)
    assert done.returncode == 65, describe(done)
    assert any(key in done.stderr for key in damaged), describe(done)
    if database_exists(server, target):
        landed = server.query(
            "SELECT 't1', label, count(*) FROM t1 GROUP BY label"
            " UNION ALL SELECT 't2', label, count(*) FROM t2 GROUP BY label ORDER BY 1",
            target,
        )
        # Only a table's own rows may ever land (all of them, once proven), never another's.
        assert all(row[1] == {"t1": "aaaa", "t2": "bbbb"}[row[0]] for row in landed), landed


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_object_replaced_by_another_sets_object_of_the_same_name(
    pg_server: PostgresServer, pg_database: str, make_cli: MakeCli, target: str, compression: str
) -> None:
    """Uncompressed, both sets' objects have the same size: only the checksum can tell."""
    pg_server.execute(SAME_SIZE_SQL, pg_database)
    cli = make_cli(pg_server)
    first = cli.backup("--database", pg_database, "--compression", compression)["id"]
    pg_server.execute("UPDATE t1 SET label = 'cccc' WHERE id <= 50", pg_database)
    second = cli.backup("--database", pg_database, "--compression", compression)["id"]

    old, new = table_objects(cli, first)["public.t1"], table_objects(cli, second)["public.t1"]
    assert old["key"] == new["key"] and old["sha256"] != new["sha256"]
    if compression == "none":
        assert old["stored_bytes"] == new["stored_bytes"]
    shutil.copyfile(stored_path(cli, second, new), stored_path(cli, first, old))
    assert_damage_refused(pg_server, cli, first, pg_database, target, [old["key"]])


def test_two_objects_swapped_inside_a_set(
    pg_server: PostgresServer, pg_database: str, make_cli: MakeCli, target: str
) -> None:
    """Same size, valid data: restored as is, t1 would silently hold t2's rows."""
    pg_server.execute(SAME_SIZE_SQL, pg_database)
    cli = make_cli(pg_server)
    set_id = cli.backup("--database", pg_database, "--compression", "none")["id"]
    objects = table_objects(cli, set_id)
    one, two = objects["public.t1"], objects["public.t2"]
    assert one["stored_bytes"] == two["stored_bytes"]
    path_one, path_two = stored_path(cli, set_id, one), stored_path(cli, set_id, two)
    parked = path_one.with_name("parked")
    path_one.rename(parked)
    path_two.rename(path_one)
    parked.rename(path_two)
    assert_damage_refused(pg_server, cli, set_id, pg_database, target, [one["key"], two["key"]])


# -- dying processes ------------------------------------------------------------------------

# Two hundred tables with long comments make a pre-data section of well over
# the 64 kB a pipe holds; 8 MiB of random large-object bytes and a 38 MB
# table keep their streams busy.
BUSY_SQL = """
DO $$
BEGIN
  FOR i IN 1..200 LOOP
    EXECUTE format('CREATE TABLE filler_%s (id int PRIMARY KEY, note text DEFAULT %L)', i, 'filler ' || i);
    EXECUTE format('COMMENT ON TABLE filler_%s IS %L', i, repeat('filler table ' || i || ' ', 40));
    EXECUTE format('INSERT INTO filler_%s (id) SELECT generate_series(1, 20)', i);
  END LOOP;
END $$;
CREATE TABLE wide AS SELECT g AS id, repeat(md5(g::text), 4) AS body FROM generate_series(1, 300000) AS g;
ALTER TABLE wide ADD PRIMARY KEY (id);
SELECT lo_from_bytea(0, (SELECT string_agg(decode(md5(random()::text), 'hex'), ''::bytea)
                           FROM generate_series(1, 512 * 1024)));
"""


@pytest.fixture(scope="module")
def busy_db(pg_server: PostgresServer) -> Iterator[str]:
    name = f"pipeline_{secrets.token_hex(6)}"
    pg_server.create_database(name)
    try:
        pg_server.execute(BUSY_SQL, name)
        yield name
    finally:
        pg_server.drop_database(name)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def wait_for_child(proc: subprocess.Popen[str], tool: str, marker: str) -> int:
    """Pid of a child of ``proc`` (by its ppid in /proc) running ``tool`` with ``marker`` in its argv."""
    deadline = time.monotonic() + FIND_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dbbackup exited {proc.returncode} before {tool} {marker} ran")
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _parent(int(entry)) == proc.pid:
                argv = _cmdline(int(entry))
                if argv and Path(argv[0]).name == tool and any(marker in arg for arg in argv):
                    return int(entry)
        time.sleep(0.005)
    pytest.fail(f"no {tool} {marker} child of dbbackup within {FIND_TIMEOUT:g} s")


def bytes_written(pid: int) -> int:
    """What ``pid`` has written so far; 0 once it is gone."""
    try:
        io_stats = Path(f"/proc/{pid}/io").read_text(encoding="ascii")
    except OSError:
        return 0
    for line in io_stats.splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """dbbackup stopped (so its children's output backs up), and always thawed again."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def assert_no_set_left(cli: Cli) -> None:
    assert cli.list_json() == []
    instance_dir = cli.repo / "default"
    leftovers = sorted(p.name for p in instance_dir.iterdir()) if instance_dir.exists() else []
    assert leftovers == [], f"an incomplete set was left behind: {leftovers}"
    assert not list(cli.repo.rglob("manifest.json"))


@pytest.mark.parametrize(
    ("section", "marker"),
    [("pre-data", "--section=pre-data"), ("large objects", "--exclude-table-data")],
)
def test_pg_dump_killed_mid_stream_fails_the_backup(
    pg_server: PostgresServer, busy_db: str, make_cli: MakeCli, section: str, marker: str
) -> None:
    cli = make_cli(pg_server)
    proc = cli.popen("backup", "--database", busy_db)
    dump_pid = wait_for_child(proc, "pg_dump", marker)
    with frozen(proc.pid):
        deadline = time.monotonic() + 10
        while pid_alive(dump_pid) and bytes_written(dump_pid) < 64 * 1024 and time.monotonic() < deadline:
            time.sleep(0.01)
        written = bytes_written(dump_pid)
        assert pid_alive(dump_pid), f"pg_dump {section} finished before it could be killed"
        os.kill(dump_pid, signal.SIGKILL)
    done = finish(proc)
    print(f"\npg_dump ({section}) killed after writing {written} bytes: exit {done.returncode}")
    assert done.returncode in (65, 74), describe(done)
    assert "pg_dump" in done.stderr and "SIGKILL" in done.stderr, describe(done)
    assert_no_set_left(cli)


def test_copy_session_terminated_by_the_server_fails_the_backup(
    pg_server: PostgresServer, busy_db: str, make_cli: MakeCli
) -> None:
    cli = make_cli(pg_server)
    proc = cli.popen("backup", "--database", busy_db)
    copy_query = (
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'dbbackup'"
        " AND state = 'active' AND query LIKE 'COPY \"public\".\"wide\"%%'"
    )
    deadline = time.monotonic() + FIND_TIMEOUT
    sessions: list[tuple[Any, ...]] = []
    while not sessions:
        assert proc.poll() is None and time.monotonic() < deadline, "the COPY of public.wide never started"
        sessions = pg_server.query(copy_query, params=(busy_db,))
    with frozen(proc.pid):
        # Frozen, dbbackup reads nothing: the backend waits on its full socket, mid-COPY.
        assert pg_server.query(copy_query, params=(busy_db,)) == sessions, "COPY ended before the kill"
        assert pg_server.query("SELECT pg_terminate_backend(%s)", params=(sessions[0][0],)) == [(True,)]
    done = finish(proc)
    print(f"\nCOPY session terminated by the server: exit {done.returncode}")
    # A sysexits code that says what happened (server/connection, I/O), not a crash (70) or 1.
    assert done.returncode in (65, 69, 74), describe(done)
    assert "public.wide" in done.stderr, describe(done)
    assert_no_set_left(cli)


def wait_for_workers(pid: int) -> list[int]:
    """pg_restore --jobs forks its workers itself: wait until they are there."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        workers = descendants(pid)
        if workers:
            return workers
        if not pid_alive(pid):
            pytest.fail("pg_restore finished before its workers were seen")
        time.sleep(0.005)
    pytest.fail("pg_restore started no workers")


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if pid_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if pid_alive(pid)]
    return alive


@pytest.mark.parametrize(
    ("section", "marker", "jobs"),
    [("pre-data", "--single-transaction", "1"), ("post-data", "--jobs=2", "2")],
)
def test_pg_restore_killed_mid_run_fails_the_database(
    pg_server: PostgresServer,
    busy_db: str,
    make_cli: MakeCli,
    target: str,
    section: str,
    marker: str,
    jobs: str,
) -> None:
    cli = make_cli(pg_server)
    set_id = cli.backup("--database", busy_db)["id"]
    proc = cli.popen(
        "restore", set_id, "--database", busy_db, "--target-db", target, "--jobs", jobs, "--json"
    )
    restore_pid = wait_for_child(proc, "pg_restore", marker)
    workers = wait_for_workers(restore_pid) if section == "post-data" else []
    os.kill(restore_pid, signal.SIGKILL)
    done = finish(proc)
    assert done.returncode != 0, describe(done)
    report = restore_json(done)
    assert [(d["database"], d["status"]) for d in report["databases"]] == [(busy_db, "failed")], report
    assert "pg_restore" in report["databases"][0]["reason"], report
    assert report["exit_code"] == done.returncode and not report["ok"]
    assert wait_gone(workers) == [], "pg_restore workers outlived their parent"
    # A run that completes afterwards (--clean) proves the failure left nothing in the way.
    again = cli.run(
        "restore", set_id, "--database", busy_db, "--target-db", target, "--clean", timeout=RUN_TIMEOUT
    )
    assert again.returncode == 0, describe(again)
    assert pg_fingerprint(pg_server, target) == pg_fingerprint(pg_server, busy_db)
