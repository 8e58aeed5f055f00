"""MariaDB backups that restore to exactly what was backed up: dbbackup run as a program.

Every comparison is of real server state: row counts, CHECKSUM TABLE EXTENDED
and SHOW CREATE TABLE of every table, and the definitions of routines,
triggers, events and views (``harness.mariadb_fingerprint``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import MariaDBServer, mariadb_fingerprint, mariadb_grants
from harness.mariadb import quote_ident

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = pytest.mark.timeout(240)

ALL_BYTES = bytes(range(256)).hex()

# Types the row format must carry byte for byte; names that need quoting;
# values full of the escape characters; objects that are not tables.
RICH_SCHEMA = [
    """CREATE TABLE `Mixed Case` (
        id INT AUTO_INCREMENT PRIMARY KEY, label VARCHAR(100) NOT NULL, price DECIMAL(10,2), qty INT,
        total DECIMAL(12,2) AS (price * qty) STORED, twice INT AS (qty * 2) VIRTUAL,
        hidden INT INVISIBLE DEFAULT 7, note TEXT, small_blob BLOB, medium MEDIUMBLOB, long_text LONGTEXT,
        doc JSON, bits BIT(13), choice ENUM('a', 'b c', 'tab\\there'), flags SET('x', 'y', 'z'),
        yr YEAR, day DATE, moment DATETIME(6), stamp TIMESTAMP(3) NULL, span TIME(2), f FLOAT, d DOUBLE,
        old_latin VARCHAR(50) CHARACTER SET latin1, wide VARCHAR(20) CHARACTER SET utf16, fixed BINARY(4),
        shape GEOMETRY, spot POINT, uid UUID, addr INET6, KEY (label)
    ) AUTO_INCREMENT = 1000""",
    """INSERT INTO `Mixed Case` (label, price, qty, note, small_blob, medium, long_text, doc, bits, choice,
        flags, yr, day, moment, stamp, span, f, d, old_latin, wide, fixed, shape, spot, uid, addr)
       SELECT CONCAT('item ', seq), seq * 1.5, seq % 7,
              IF(seq % 5 = 0, NULL, CONCAT('line1\\nline2\\ttab\\\\back\\\\\\\\slash ', seq)),
              UNHEX(LPAD(HEX(seq), 8, '0')), REPEAT(UNHEX('5C090A00'), seq), REPEAT('ü\\t', seq),
              JSON_OBJECT('n', seq, 's', 'tab\\there'), seq, ELT(1 + seq % 3, 'a', 'b c', 'tab\\there'),
              'x,z', 1990 + seq % 50, '2024-02-29' - INTERVAL seq DAY,
              '2024-01-01 00:00:00.123456' + INTERVAL seq MINUTE, '2024-03-31 01:30:00.5' + INTERVAL seq HOUR,
              SEC_TO_TIME(seq * 61.25), seq / 3, seq / 7, CONVERT(CONCAT('café ', seq) USING latin1),
              CONVERT(CONCAT('ŵide ', seq) USING utf16), UNHEX('00FF0A09'),
              ST_GeomFromText(CONCAT('LINESTRING(0 0, ', seq, ' 1.5)')), POINT(seq, -seq),
              UUID(), INET6_ATON(CONCAT('2001:db8::', HEX(seq)))
       FROM seq_1_to_300""",
    f"""INSERT INTO `Mixed Case` (label, small_blob, note, old_latin, doc)
        VALUES ('all bytes', UNHEX('{ALL_BYTES}'),
                '\\\\N is not null, \\r, "q", ''a'', end\\\\', '', '[]')""",
    "INSERT INTO `Mixed Case` (label) VALUES ('nulls everywhere')",
    "SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'",
    "INSERT INTO `Mixed Case` (id, label, day, moment)"
    " VALUES (0, 'zero id', '0000-00-00', '0000-00-00 00:00:00')",
    "CREATE TABLE `Élément` (id INT PRIMARY KEY, item_id INT,"
    " FOREIGN KEY (item_id) REFERENCES `Mixed Case` (id))",
    "INSERT INTO `Élément` SELECT seq, 999 + seq FROM seq_1_to_50",
    "CREATE TABLE `we``ird tab.le` (k VARCHAR(30) PRIMARY KEY, v LONGBLOB)",
    "INSERT INTO `we``ird tab.le` VALUES ('a', NULL), ('tab\\tkey\\nnl', ''), ('c', UNHEX('5C4E'))",
    "CREATE TABLE empty_one (a INT)",
    "CREATE TABLE only_long (doc LONGTEXT)",
    "INSERT INTO only_long VALUES ('one'), (NULL), ('')",
    "CREATE TABLE big (id INT PRIMARY KEY, a VARCHAR(64), b INT)",
    "INSERT INTO big SELECT seq, MD5(seq), seq * 3 FROM seq_1_to_20000",
    "CREATE TABLE aria_log (id INT, msg VARCHAR(20)) ENGINE = Aria",
    "INSERT INTO aria_log VALUES (1, 'aria'), (2, 'more')",
    "CREATE TABLE my_old (id INT, msg VARCHAR(20)) ENGINE = MyISAM",
    "INSERT INTO my_old VALUES (1, 'myisam')",
    "CREATE SEQUENCE ticket START WITH 100 INCREMENT BY 5",
    "CREATE TABLE tickets (id INT DEFAULT NEXTVAL(ticket), what VARCHAR(10))",
    "INSERT INTO tickets (what) VALUES ('one'), ('two')",
    """CREATE FUNCTION price_with_tax(p DECIMAL(10,2)) RETURNS DECIMAL(12,2) DETERMINISTIC
       RETURN p * 1.19""",
    """CREATE PROCEDURE count_items(OUT n INT)
       BEGIN
         -- a body with statement ends and ;; inside
         SELECT COUNT(*) INTO n FROM `Mixed Case`; SET @marker = ';;';
       END""",
    "CREATE VIEW cheap AS SELECT id, label, price_with_tax(price) AS gross"
    " FROM `Mixed Case` WHERE price < 10",
    "CREATE VIEW cheapest AS SELECT id, gross FROM cheap WHERE gross < 5",
    """CREATE TRIGGER stamp_label BEFORE INSERT ON `Élément` FOR EACH ROW
       SET NEW.item_id = IFNULL(NEW.item_id, 1)""",
    "CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 03:00:00'"
    " DISABLE DO DELETE FROM aria_log",
    "SET NAMES latin1",
    "CREATE PROCEDURE latin_body() SELECT 'déjà vu' AS greeting",
]


def mysql_cli(make_cli: MakeCli, server: MariaDBServer, **sections: dict[str, Any]) -> Cli:
    """dbbackup configured for ``server`` with engine = "mysql"; password through the environment."""
    cli = make_cli(
        None,
        port=server.port,
        user="root",
        password="",
        env={"DBBACKUP_CONNECTION_PASSWORD": server.password},
        **sections,
    )
    cli.top["engine"] = "mysql"
    cli.write_config()
    return cli


def fill_rich(server: MariaDBServer, database: str) -> None:
    with server.connect(database) as conn, conn.cursor() as cur:
        for statement in RICH_SCHEMA:
            cur.execute(statement)


def renamed(fingerprint: dict[str, Any], server: MariaDBServer, database: str) -> dict[str, Any]:
    """The fingerprint without view definitions, which name their database; those are compared apart."""
    result = dict(fingerprint)
    result["views"] = sorted(
        str(definition).replace(quote_ident(database), "`DB`")
        for (definition,) in server.query(
            "SELECT CONCAT(TABLE_NAME, ' ', VIEW_DEFINITION) FROM information_schema.VIEWS"
            " WHERE TABLE_SCHEMA = %s",
            params=(database,),
        )
    )
    return result


@pytest.fixture
def cli(make_cli: MakeCli, mariadb_server: MariaDBServer) -> Cli:
    return mysql_cli(make_cli, mariadb_server)


@pytest.fixture
def scratch(mariadb_server: MariaDBServer) -> Iterator[Callable[[str], str]]:
    """``new(prefix)``: a database name dropped after the test."""
    names: list[str] = []

    def new(prefix: str = "target") -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        names.append(name)
        return name

    yield new
    for name in names:
        mariadb_server.drop_database(name)


@pytest.fixture
def rich_db(mariadb_server: MariaDBServer, mariadb_database: str) -> str:
    fill_rich(mariadb_server, mariadb_database)
    return mariadb_database


def manifest_of(cli: Cli, set_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((cli.set_dir(set_id) / "manifest.json").read_text())
    return data


def test_database_round_trip_into_a_new_name(
    cli: Cli, mariadb_server: MariaDBServer, rich_db: str, scratch: Callable[[str], str]
) -> None:
    before = mariadb_fingerprint(mariadb_server, rich_db)
    summary = cli.backup("--database", rich_db, "--jobs", "3")
    target = scratch("copy")
    cli.ok("restore", summary["id"], "--database", rich_db, "--target-db", target, "--jobs", "3")
    after = mariadb_fingerprint(mariadb_server, target)
    assert renamed(after, mariadb_server, target) == renamed(before, mariadb_server, rich_db)
    assert len(before["tables"]) == 9 and before["tables"]["Mixed Case"]["rows"] == 303
    assert len(before["routines"]) == 3 and before["triggers"] and before["events"]
    # Sequences continue after where they were, never repeating a value.
    assert mariadb_server.query(f"SELECT NEXTVAL({quote_ident(target)}.ticket)")[0][0] >= 110


def test_restore_under_the_same_name_is_exact(cli: Cli, mariadb_server: MariaDBServer, rich_db: str) -> None:
    before = mariadb_fingerprint(mariadb_server, rich_db)
    summary = cli.backup("--database", rich_db)
    mariadb_server.drop_database(rich_db)
    cli.ok("restore", summary["id"])
    assert mariadb_fingerprint(mariadb_server, rich_db) == before
    hidden = mariadb_server.query(f"SELECT SUM(hidden), COUNT(*) FROM {quote_ident(rich_db)}.`Mixed Case`")
    assert hidden == [(7 * 303, 303)]


def test_the_set_records_the_snapshot_and_warns_about_non_transactional_tables(
    cli: Cli, mariadb_server: MariaDBServer, rich_db: str
) -> None:
    done = cli.ok("backup", "--json", "--database", rich_db)
    set_id = json.loads(done.stdout)["id"]
    (status,) = mariadb_server.query("SHOW MASTER STATUS")
    entry = manifest_of(cli, set_id)["databases"][0]
    consistency = entry["properties"]["consistency"]
    assert consistency["method"] == "flush-tables-with-read-lock"
    assert consistency["binlog_file"] == status[0]
    assert 0 < consistency["binlog_position"] <= status[1]
    assert consistency["gtid"] == mariadb_server.query("SELECT @@gtid_binlog_pos")[0][0]
    assert sorted(consistency["non_transactional"]["tables"]) == ["aria_log (Aria)", "my_old (MyISAM)"]
    assert "non-transactional engines" in done.stderr and "aria_log" in done.stderr
    roles = sorted(o["role"] for o in entry["objects"])
    assert roles.count("table-data") == 9
    assert {"pre-data", "post-data", "sequences"} <= set(roles)


def test_a_subset_of_a_set_restores_alone(
    cli: Cli, mariadb_server: MariaDBServer, scratch: Callable[[str], str]
) -> None:
    first, second = scratch("first"), scratch("second")
    for name, rows in ((first, 10), (second, 20)):
        mariadb_server.create_database(name)
        mariadb_server.execute("CREATE TABLE t (id INT PRIMARY KEY)", name)
        mariadb_server.execute(f"INSERT INTO t SELECT seq FROM seq_1_to_{rows}", name)
    before = mariadb_fingerprint(mariadb_server, second)
    summary = cli.backup("--database", first, "--database", second)
    assert sorted(summary["databases"]) == sorted([first, second])
    mariadb_server.drop_database(first)
    mariadb_server.drop_database(second)
    report = json.loads(cli.ok("restore", summary["id"], "--database", second, "--json").stdout)
    assert [(d["database"], d["status"]) for d in report["databases"]] == [(second, "restored")]
    assert mariadb_fingerprint(mariadb_server, second) == before
    assert not mariadb_server.query("SHOW DATABASES LIKE %s", params=(first,))


def test_an_existing_database_needs_clean(
    cli: Cli, mariadb_server: MariaDBServer, mariadb_database: str
) -> None:
    mariadb_server.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))", mariadb_database)
    mariadb_server.execute("INSERT INTO t VALUES (1, 'kept')", mariadb_database)
    before = mariadb_fingerprint(mariadb_server, mariadb_database)
    summary = cli.backup("--database", mariadb_database)
    mariadb_server.execute("INSERT INTO t VALUES (2, 'later')", mariadb_database)
    refused = cli.run("restore", summary["id"])
    assert refused.returncode == 73, cli.describe(refused)
    assert "already exists and is not empty" in refused.stdout + refused.stderr
    assert mariadb_server.query("SELECT COUNT(*) FROM t", mariadb_database) == [(2,)]
    cli.ok("restore", summary["id"], "--clean")
    assert mariadb_fingerprint(mariadb_server, mariadb_database) == before


ACCOUNT_ROWS = 20000


@contextlib.contextmanager
def transfers(server: MariaDBServer, db: str, debit: str, credit: str) -> Iterator[list[int]]:
    """Move 7 from ``debit`` to ``credit`` (same ids), one transaction per move, while the
    block runs; yields the list of moves made, so a test can tell that any happened."""
    stop = threading.Event()
    moved: list[int] = []

    def run() -> None:
        with server.connect(db) as conn, conn.cursor() as cur:
            cur.execute("SET autocommit = 0")
            while not stop.is_set():
                row = secrets.randbelow(ACCOUNT_ROWS) + 1
                cur.execute(f"UPDATE {debit} SET amount = amount - 7 WHERE id = %s", (row,))
                cur.execute(f"UPDATE {credit} SET amount = amount + 7 WHERE id = %s", (row,))
                cur.execute("COMMIT")
                moved.append(row)

    writer = threading.Thread(target=run, daemon=True)
    writer.start()
    try:
        time.sleep(0.3)
        yield moved
    finally:
        stop.set()
        writer.join(30)
    assert moved, "no transfer happened during the backup"


def test_snapshot_is_one_moment_for_every_worker(
    cli: Cli, mariadb_server: MariaDBServer, mariadb_database: str, scratch: Callable[[str], str]
) -> None:
    """Transfers between two tables run during the backup; the copy must balance."""
    db = mariadb_database
    for table in ("left_side", "right_side"):
        mariadb_server.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, amount INT NOT NULL)", db)
        mariadb_server.execute(f"INSERT INTO {table} SELECT seq, 1000 FROM seq_1_to_20000", db)
    total = 2 * ACCOUNT_ROWS * 1000
    with transfers(mariadb_server, db, "left_side", "right_side"):
        summary = cli.backup("--database", db, "--jobs", "4")
    target = scratch("balanced")
    cli.ok("restore", summary["id"], "--target-db", target, "--database", db)
    sums = mariadb_server.query(
        "SELECT (SELECT SUM(amount) FROM left_side) + (SELECT SUM(amount) FROM right_side)", target
    )
    assert int(sums[0][0]) == total


def test_several_databases_come_from_one_snapshot(
    cli: Cli, mariadb_server: MariaDBServer, mariadb_database: str, scratch: Callable[[str], str]
) -> None:
    """Transfers between two databases run during their backup; together the copies balance."""
    first, second = mariadb_database, scratch("second_source")
    mariadb_server.create_database(second)
    for db in (first, second):
        mariadb_server.execute("CREATE TABLE account (id INT PRIMARY KEY, amount INT NOT NULL)", db)
        mariadb_server.execute("INSERT INTO account SELECT seq, 1000 FROM seq_1_to_20000", db)
    total = 2 * ACCOUNT_ROWS * 1000
    with transfers(mariadb_server, first, f"`{first}`.account", f"`{second}`.account"):
        summary = cli.backup("--database", first, "--database", second, "--jobs", "2")
    points = [db["properties"]["consistency"] for db in manifest_of(cli, summary["id"])["databases"]]
    assert [p["scope"] for p in points] == ["server", "server"]
    assert points[0]["binlog_position"] == points[1]["binlog_position"]
    assert points[0]["gtid"] == points[1]["gtid"]
    copies = [scratch("first_copy"), scratch("second_copy")]
    for source, target in zip((first, second), copies, strict=True):
        cli.ok("restore", summary["id"], "--database", source, "--target-db", target)
    sums = [int(mariadb_server.query("SELECT SUM(amount) FROM account", t)[0][0]) for t in copies]
    assert sum(sums) == total


def test_whole_server_with_users_roles_and_grants(make_cli: MakeCli, tmp_path: Path) -> None:
    """``--all`` on a server of its own: databases, users and grants come back after being dropped."""
    with MariaDBServer() as server:
        server.create_database("shop")
        fill_rich(server, "shop")
        server.create_database("crm")
        server.execute("CREATE TABLE contacts (id INT PRIMARY KEY, name VARCHAR(20))", "crm")
        server.execute("INSERT INTO contacts VALUES (1, 'Ada'), (2, 'Grace')", "crm")
        for statement in (
            "CREATE ROLE reader",
            "GRANT SELECT ON shop.* TO reader",
            "CREATE ROLE auditor",
            "GRANT reader TO auditor",
            "CREATE USER 'app'@'%' IDENTIFIED BY 'app-secret' WITH MAX_QUERIES_PER_HOUR 500",
            "GRANT INSERT, UPDATE ON shop.`Mixed Case` TO 'app'@'%'",
            "GRANT SELECT (a) ON shop.big TO 'app'@'%'",
            "GRANT EXECUTE ON PROCEDURE shop.count_items TO 'app'@'%'",
            "GRANT reader TO 'app'@'%'",
            "SET DEFAULT ROLE reader FOR 'app'@'%'",
            "CREATE USER 'ops'@'10.0.%' IDENTIFIED BY 'ops-secret' ACCOUNT LOCK",
            "GRANT auditor TO 'ops'@'10.0.%' WITH ADMIN OPTION",
            "GRANT ALL ON crm.* TO 'ops'@'10.0.%' WITH GRANT OPTION",
        ):
            server.execute(statement)
        grants = mariadb_grants(server)
        prints = {name: mariadb_fingerprint(server, name) for name in ("shop", "crm")}
        cli = mysql_cli(make_cli, server)
        summary = cli.backup("--all")
        assert sorted(summary["databases"]) == ["crm", "shop"]
        assert manifest_of(cli, summary["id"])["globals"][0]["role"] == "globals"

        for statement in (
            "DROP USER 'app'@'%'",
            "DROP USER 'ops'@'10.0.%'",
            "DROP ROLE reader",
            "DROP ROLE auditor",
        ):
            server.execute(statement)
        for name in ("shop", "crm"):
            server.drop_database(name)
        assert set(mariadb_grants(server)) == set()

        report = json.loads(cli.ok("restore", summary["id"], "--all", "--json").stdout)
        assert report["globals_status"] == "restored", report["globals_problems"]
        assert mariadb_grants(server) == grants
        assert {name: mariadb_fingerprint(server, name) for name in ("shop", "crm")} == prints
        (create_ops,) = server.query("SHOW CREATE USER 'ops'@'10.0.%'")[0]
        assert create_ops.endswith("ACCOUNT LOCK")
