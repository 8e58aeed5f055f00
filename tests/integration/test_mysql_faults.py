"""MariaDB backups and restores that fail loudly: cut, killed and frozen connections, refusals.

A failed backup exits non-zero and leaves no set behind; a failed table load
commits nothing. Every fault is real: a proxy that resets or freezes the TCP
stream, a KILL on the server, server settings that refuse what is asked.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pymysql
import pytest
from harness import CuttingProxy, MariaDBServer

from dbbackup.engines.mysql import MySQLEngine
from dbbackup.engines.mysql.connection import MyEndpoint
from dbbackup.errors import EX_CONFIG, EX_DATAERR, EX_NOPERM, EX_UNAVAILABLE

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = pytest.mark.timeout(180)

ProxyFactory = Callable[..., CuttingProxy]


def mysql_cli(make_cli: MakeCli, server: MariaDBServer, port: int | None = None, **sections: Any) -> Cli:
    """dbbackup configured for ``server`` (or a proxy in front of it) with engine = "mysql"."""
    cli = make_cli(
        None,
        port=port or server.port,
        user="root",
        password="",
        env={"DBBACKUP_CONNECTION_PASSWORD": server.password},
        **sections,
    )
    cli.top["engine"] = "mysql"
    cli.write_config()
    return cli


def assert_no_set(cli: Cli) -> None:
    assert cli.list_json() == []
    assert not list(cli.repo.glob("*/*/manifest.json"))


@pytest.fixture
def busy_db(mariadb_server: MariaDBServer, mariadb_database: str) -> str:
    """About 40 MB of rows: long enough to be interrupted in the middle."""
    mariadb_server.execute(
        "CREATE TABLE big (id INT PRIMARY KEY, a CHAR(64), b VARCHAR(200), c INT)", mariadb_database
    )
    mariadb_server.execute(
        "INSERT INTO big SELECT seq, SHA2(seq, 256), REPEAT(MD5(seq), 4), seq FROM seq_1_to_150000",
        mariadb_database,
    )
    return mariadb_database


@pytest.fixture
def global_setting(mariadb_server: MariaDBServer) -> Iterator[Callable[[str, object], None]]:
    """``change(name, value)``: SET GLOBAL for this test only."""
    saved: dict[str, object] = {}

    def change(name: str, value: object) -> None:
        if name not in saved:
            saved[name] = mariadb_server.query(f"SELECT @@GLOBAL.{name}")[0][0]
        mariadb_server.execute(f"SET GLOBAL {name} = %s", params=(value,))

    yield change
    for name, value in saved.items():
        mariadb_server.execute(f"SET GLOBAL {name} = %s", params=(value,))


def test_a_connection_cut_mid_dump_fails_and_leaves_no_set(
    make_cli: MakeCli, mariadb_server: MariaDBServer, busy_db: str, cutting_proxy: ProxyFactory
) -> None:
    proxy = cutting_proxy(mariadb_server.host, mariadb_server.port, cut_after_bytes=8_000_000)
    cli = mysql_cli(make_cli, mariadb_server, port=proxy.port)
    done = cli.run("backup", "--database", busy_db)
    assert done.returncode == EX_UNAVAILABLE, cli.describe(done)
    assert "stopped answering" in done.stderr
    assert proxy.bytes_from_server >= 8_000_000
    assert_no_set(cli)


def test_a_dump_session_killed_on_the_server_fails_and_leaves_no_set(
    make_cli: MakeCli, mariadb_server: MariaDBServer, busy_db: str
) -> None:
    # xz is slow: the dump lasts long enough to be found and killed.
    cli = mysql_cli(make_cli, mariadb_server, backup={"compression": "xz", "jobs": 1})
    proc = cli.popen("backup", "--database", busy_db)
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        rows = mariadb_server.query(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND INFO LIKE 'SELECT CONCAT(%%'",
            params=(busy_db,),
        )
        victim = rows[0][0] if rows else None
        time.sleep(0.02)
    assert victim is not None, "the table dump was never seen running"
    mariadb_server.execute(f"KILL {int(victim)}")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == EX_UNAVAILABLE, err
    assert "table big" in err
    assert_no_set(cli)


def test_a_network_freezing_mid_dump_fails_within_the_stall_timeout(
    make_cli: MakeCli, mariadb_server: MariaDBServer, busy_db: str, cutting_proxy: ProxyFactory
) -> None:
    proxy = cutting_proxy(mariadb_server.host, mariadb_server.port)
    cli = mysql_cli(
        make_cli,
        mariadb_server,
        port=proxy.port,
        connection={"stall_timeout": "3s", "connect_timeout": "3s"},
        backup={"compression": "xz", "jobs": 1},
    )
    proc = cli.popen("backup", "--database", busy_db)
    deadline = time.monotonic() + 60
    while proxy.bytes_from_server < 2_000_000 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the backup ended before the network could freeze"
    frozen_at = time.monotonic()
    proxy.freeze()
    _out, err = proc.communicate(timeout=120)
    waited = time.monotonic() - frozen_at
    assert proc.returncode == EX_UNAVAILABLE, err
    assert waited < 30, waited
    assert_no_set(cli)


def test_wrong_password_and_no_server_have_their_exit_codes(
    make_cli: MakeCli, mariadb_server: MariaDBServer, mariadb_database: str, cutting_proxy: ProxyFactory
) -> None:
    cli = mysql_cli(make_cli, mariadb_server)
    denied = cli.run("backup", "--database", mariadb_database, env={"DBBACKUP_CONNECTION_PASSWORD": "wrong"})
    assert denied.returncode == EX_NOPERM, cli.describe(denied)
    assert "Access denied" in denied.stderr and "wrong" not in denied.stderr
    proxy = cutting_proxy(mariadb_server.host, mariadb_server.port)
    proxy.freeze()
    frozen = mysql_cli(make_cli, mariadb_server, port=proxy.port, connection={"connect_timeout": "2s"})
    started = time.monotonic()
    done = frozen.run("backup", "--database", mariadb_database, timeout=60)
    assert done.returncode == EX_UNAVAILABLE, frozen.describe(done)
    assert time.monotonic() - started < 20
    assert_no_set(frozen)


def test_a_row_the_server_cannot_format_fails_the_dump(
    make_cli: MakeCli,
    mariadb_server: MariaDBServer,
    mariadb_database: str,
    global_setting: Callable[[str, object], None],
) -> None:
    """Escaping doubles every backslash; past max_allowed_packet the server would return NULL."""
    mariadb_server.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(3000))", mariadb_database)
    mariadb_server.execute("INSERT INTO t VALUES (1, REPEAT('\\\\', 3000))", mariadb_database)
    global_setting("max_allowed_packet", 4096)
    cli = mysql_cli(make_cli, mariadb_server)
    done = cli.run("backup", "--database", mariadb_database)
    assert done.returncode == EX_DATAERR, cli.describe(done)
    assert "max_allowed_packet" in done.stderr and "table t" in done.stderr
    assert_no_set(cli)


def test_a_server_refusing_local_infile_is_a_configuration_error(
    make_cli: MakeCli,
    mariadb_server: MariaDBServer,
    mariadb_database: str,
    global_setting: Callable[[str, object], None],
) -> None:
    mariadb_server.execute("CREATE TABLE t (id INT PRIMARY KEY)", mariadb_database)
    mariadb_server.execute("INSERT INTO t VALUES (1), (2)", mariadb_database)
    cli = mysql_cli(make_cli, mariadb_server)
    summary = cli.backup("--database", mariadb_database)
    global_setting("local_infile", 0)
    done = cli.run("restore", summary["id"], "--clean", "--json")
    assert done.returncode == EX_CONFIG, cli.describe(done)
    report = json.loads(done.stdout)
    assert "local_infile" in report["databases"][0]["hint"]
    assert mariadb_server.query("SELECT COUNT(*) FROM t", mariadb_database) == [(0,)]


def test_rows_whose_checksum_fails_are_never_committed(
    make_cli: MakeCli, mariadb_server: MariaDBServer, busy_db: str
) -> None:
    """Uncompressed, a flipped digit is valid text: only the checksum, proven before COMMIT, stops it."""
    cli = mysql_cli(make_cli, mariadb_server, backup={"compression": "none"})
    summary = cli.backup("--database", busy_db)
    (data,) = cli.set_dir(summary["id"]).glob("*/data/*.tsv")
    raw = bytearray(data.read_bytes())
    # The first character of column a (a hex digest) on a line in the middle: valid either way.
    position = raw.index(b"\t", raw.index(b"\n", len(raw) // 2)) + 1
    raw[position] = ord("0") if raw[position] != ord("0") else ord("1")
    data.write_bytes(bytes(raw))
    done = cli.run("restore", summary["id"], "--clean")
    assert done.returncode == EX_DATAERR, cli.describe(done)
    assert mariadb_server.query("SELECT COUNT(*) FROM big", busy_db) == [(0,)]


def test_a_row_too_large_for_the_redo_log_is_refused_before_it_lands(
    make_cli: MakeCli, mariadb_server: MariaDBServer, mariadb_database: str
) -> None:
    """InnoDB wants ten times the largest row in its redo log; a bigger row is refused, not risked."""
    (redo,) = mariadb_server.query("SELECT @@innodb_log_file_size")[0]
    size = redo // 10 + (1 << 20)
    mariadb_server.execute("CREATE TABLE docs (id INT PRIMARY KEY, body LONGBLOB)", mariadb_database)
    mariadb_server.execute(
        "INSERT INTO docs VALUES (1, 'small'), (2, REPEAT('x', %s))", mariadb_database, (size,)
    )
    cli = mysql_cli(make_cli, mariadb_server)
    summary = cli.backup("--database", mariadb_database)
    done = cli.run("restore", summary["id"], "--clean", "--json")
    assert done.returncode == EX_DATAERR, cli.describe(done)
    (outcome,) = json.loads(done.stdout)["databases"]
    assert "table docs" in outcome["reason"]
    # The row is the value plus its id and a separator.
    reported = int(re.search(r"a row of about (\d+) bytes", outcome["reason"]).group(1))  # type: ignore[union-attr]
    assert size < reported <= size + 4
    assert "innodb_log_file_size" in outcome["hint"]
    assert mariadb_server.query("SELECT COUNT(*) FROM docs", mariadb_database) == [(0,)]


class _Collect:
    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.buffer.write(data)


def _engine(server: MariaDBServer, mode: str) -> MySQLEngine:
    endpoint = MyEndpoint(
        host=server.host,
        port=server.port,
        unix_socket=None,
        user=server.user,
        sslmode="disable",
        connect_timeout=5,
        io_timeout=60,
        lock_timeout=30,
        statement_timeout=0,
        password=server.password,
    )
    return MySQLEngine(endpoint, jobs=2, non_transactional=mode)


def _write_blocked(server: MariaDBServer, database: str) -> bool:
    """True when an insert cannot get past the global read lock within a second."""
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION lock_wait_timeout = 1")
        try:
            cur.execute("INSERT INTO ledger VALUES (NULL)")
        except pymysql.err.OperationalError as exc:
            assert exc.args[0] == 1205, exc
            return True
    return False


@pytest.mark.parametrize("mode", ["warn", "lock"])
def test_non_transactional_tables_under_warn_and_lock(
    mariadb_server: MariaDBServer, mariadb_database: str, mode: str
) -> None:
    """``lock`` keeps writes out until the Aria table is dumped; ``warn`` releases them at once."""
    db = mariadb_database
    mariadb_server.execute("CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY)", db)
    mariadb_server.execute("CREATE TABLE journal (id INT, note VARCHAR(10)) ENGINE = Aria", db)
    mariadb_server.execute("INSERT INTO journal VALUES (1, 'first'), (2, 'second')", db)
    engine = _engine(mariadb_server, mode)
    with engine.snapshot(db) as dump:
        assert dump.consistency["non_transactional"] == {"mode": mode, "tables": ["journal (Aria)"]}
        assert _write_blocked(mariadb_server, db) == (mode == "lock")
        sinks = {}
        for task in dump.first:
            sinks[task.name] = _Collect()
            task.run(sinks[task.name])
        assert not _write_blocked(mariadb_server, db)
        for task in dump.parallel:
            sinks[task.name] = _Collect()
            task.run(sinks[task.name])
        journal = next(t for t in dump.first + dump.parallel if t.table and t.table.name == "journal")
        assert (journal in dump.first) == (mode == "lock")
        assert sinks[journal.name].buffer.getvalue() == b"1\tfirst\n2\tsecond\n"
    engine.close()
