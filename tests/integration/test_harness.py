"""The test harness itself: real servers start, answer, fingerprint and fail on demand."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pymysql
import pytest
from harness import (
    CuttingProxy,
    MariaDBServer,
    PgBouncer,
    PostgresServer,
    mariadb_fingerprint,
    mariadb_grants,
    pg_fingerprint,
    pg_roles,
    pg_tool,
    require_binary,
)

PG_SCHEMA = """
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Items" (id serial PRIMARY KEY, name text NOT NULL,
                                   price numeric(10, 2) CHECK (price >= 0), added timestamptz);
CREATE INDEX items_name ON "Odd Schema"."Items" (name);
CREATE TABLE public.empty (t int);
CREATE VIEW public.cheap AS SELECT name FROM "Odd Schema"."Items" WHERE price < 10;
CREATE FUNCTION public.double(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2';
INSERT INTO "Odd Schema"."Items" (name, price, added)
SELECT 'item ' || g, g / 3.0, '2024-01-01 00:00+00'::timestamptz + g * interval '1 hour'
  FROM generate_series(1, 500) AS g;
"""


def test_postgres_answers_and_requires_password(pg_server: PostgresServer) -> None:
    assert pg_server.query("SELECT 1 + 1") == [(2,)]
    assert pg_server.version >= 150000
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(pg_server.dsn(), connect_timeout=5)
    if os.geteuid() == 0:
        # PostgreSQL refuses root: the harness runs it as the postgres user.
        assert pg_server.data_dir.stat().st_uid != 0


def test_postgres_env_reaches_server_from_a_child(pg_server: PostgresServer) -> None:
    env = {"PATH": os.environ["PATH"], **pg_server.env()}
    psql = pg_tool(pg_server, "psql")
    done = subprocess.run(
        [psql, "-XAtc", "SELECT current_user || ':' || inet_server_port()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == f"postgres:{pg_server.port}"


def test_pg_fingerprint_is_stable_and_sees_one_changed_row(
    pg_server: PostgresServer, pg_database: str
) -> None:
    pg_server.execute(PG_SCHEMA, pg_database)
    first = pg_fingerprint(pg_server, pg_database)
    assert first["tables"]["Odd Schema.Items"]["rows"] == 500
    assert first["tables"]["public.empty"]["rows"] == 0
    assert any(f.startswith("public.double(x integer)") for f in first["functions"])
    assert first["schemas"] == ["Odd Schema", "public"]
    assert any("items_name" in index for index in first["indexes"])
    assert any("CHECK" in constraint for constraint in first["constraints"])

    # A no-op update moves the row physically; the fingerprint ignores row order.
    pg_server.execute('UPDATE "Odd Schema"."Items" SET name = name WHERE id = 1', pg_database)
    assert pg_fingerprint(pg_server, pg_database) == first

    pg_server.execute('UPDATE "Odd Schema"."Items" SET price = price + 0.01 WHERE id = 250', pg_database)
    changed = pg_fingerprint(pg_server, pg_database)
    assert changed["tables"]["Odd Schema.Items"]["hash"] != first["tables"]["Odd Schema.Items"]["hash"]
    assert changed["tables"]["Odd Schema.Items"]["rows"] == 500
    assert {k: v for k, v in changed.items() if k != "tables"} == {
        k: v for k, v in first.items() if k != "tables"
    }


def test_pg_roles_lists_created_roles(pg_server: PostgresServer) -> None:
    pg_server.execute("CREATE ROLE harness_group NOLOGIN")
    pg_server.execute("CREATE ROLE harness_user LOGIN CREATEDB PASSWORD 'pw' IN ROLE harness_group")
    try:
        roles = pg_roles(pg_server)
        assert roles["harness_user"]["login"] is True
        assert roles["harness_user"]["createdb"] is True
        assert roles["harness_user"]["member_of"] == ["harness_group"]
        assert roles["harness_user"]["password_md5"] is not None
        assert "postgres" not in roles
    finally:
        pg_server.execute("DROP ROLE harness_user")
        pg_server.execute("DROP ROLE harness_group")


def test_pgbouncer_forwards_in_transaction_mode(pg_bouncer: PgBouncer, pg_server: PostgresServer) -> None:
    with pg_bouncer.connect() as conn:
        rows = conn.execute("SELECT inet_server_port(), %s::int", (41,)).fetchall()
    assert rows == [(pg_server.port, 41)]
    pools = pg_bouncer.admin_query("SHOW POOLS")
    assert ("postgres", "postgres") in {(p[0], p[1]) for p in pools}
    assert {p[-1] for p in pools if p[0] == "postgres"} == {"transaction"}


def test_mariadb_answers_with_binlog(mariadb_server: MariaDBServer) -> None:
    assert mariadb_server.query("SELECT 1 + 1") == [(2,)]
    assert mariadb_server.query("SELECT @@log_bin, @@bind_address") == [(1, "127.0.0.1")]
    assert "MariaDB" in mariadb_server.version
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        pymysql.connect(
            host=mariadb_server.host,
            port=mariadb_server.port,
            user="root",
            password="wrong",
            connect_timeout=5,
        )


def test_mariadb_fingerprint_and_grants(mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    db = mariadb_database
    for statement in (
        "CREATE TABLE items (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(50), price DECIMAL(8,2))",
        "INSERT INTO items (name, price) SELECT CONCAT('item ', seq), seq / 3 FROM seq_1_to_300",
        "CREATE VIEW cheap AS SELECT name FROM items WHERE price < 10",
        "CREATE PROCEDURE touch_items() UPDATE items SET price = price",
        "CREATE TRIGGER items_bi BEFORE INSERT ON items FOR EACH ROW SET NEW.name = TRIM(NEW.name)",
        "CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM items WHERE price < 0",
    ):
        mariadb_server.execute(statement, db)
    first = mariadb_fingerprint(mariadb_server, db)
    assert first["tables"]["items"]["rows"] == 300
    assert len(first["routines"]) == len(first["triggers"]) == len(first["events"]) == 1
    assert first["views"][0].startswith("cheap ")
    assert mariadb_fingerprint(mariadb_server, db) == first

    mariadb_server.execute("UPDATE items SET price = price + 1 WHERE id = 7", db)
    changed = mariadb_fingerprint(mariadb_server, db)
    assert changed["tables"]["items"]["checksum"] != first["tables"]["items"]["checksum"]

    mariadb_server.execute("CREATE USER 'harness'@'%' IDENTIFIED BY 'pw'")
    try:
        mariadb_server.execute(f"GRANT SELECT ON `{db}`.* TO 'harness'@'%'")
        grants = mariadb_grants(mariadb_server)
        assert any(f"GRANT SELECT ON `{db}`.*" in g for g in grants["harness@%"])
        assert "root@localhost" not in grants
    finally:
        mariadb_server.execute("DROP USER 'harness'@'%'")


def _through(proxy: CuttingProxy, server: PostgresServer) -> psycopg.Connection[tuple[int]]:
    return psycopg.connect(
        host=proxy.host,
        port=proxy.port,
        user=server.superuser,
        password=server.password,
        dbname="postgres",
        connect_timeout=5,
        autocommit=True,
    )


@pytest.mark.timeout(60)
def test_proxy_cut_on_demand_and_after_bytes(
    pg_server: PostgresServer, cutting_proxy: Callable[..., CuttingProxy]
) -> None:
    proxy = cutting_proxy(pg_server.host, pg_server.port)
    with _through(proxy, pg_server) as conn:
        assert conn.execute("SELECT 7").fetchall() == [(7,)]
        proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 8")

    limited = cutting_proxy(pg_server.host, pg_server.port, cut_after_bytes=50_000)
    with _through(limited, pg_server) as conn, pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT repeat('x', 1000) FROM generate_series(1, 1000)").fetchall()
    assert limited.bytes_from_server == 50_000


@pytest.mark.timeout(60)
def test_proxy_freeze_hangs_new_connections(
    pg_server: PostgresServer, cutting_proxy: Callable[..., CuttingProxy]
) -> None:
    proxy = cutting_proxy(pg_server.host, pg_server.port)
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        psycopg.connect(
            host=proxy.host, port=proxy.port, user="postgres", password=pg_server.password, connect_timeout=2
        )
    assert time.monotonic() - started >= 1.5
    proxy.heal()
    with _through(proxy, pg_server) as conn:
        assert conn.execute("SELECT 9").fetchall() == [(9,)]


def test_readonly_dir_refuses_writes(readonly_dir: Path) -> None:
    with pytest.raises(OSError) as failure:
        (readonly_dir / "backup.tmp").write_bytes(b"data")
    assert failure.value.errno in (errno.EROFS, errno.EACCES)


def test_full_dir_gives_enospc(full_dir: Path) -> None:
    with pytest.raises(OSError) as failure, (full_dir / "big").open("wb") as out:
        for _ in range(4):
            out.write(os.urandom(1024 * 1024))
            out.flush()
    assert failure.value.errno == errno.ENOSPC


def test_require_binary_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBBACKUP_TEST_REQUIRE_SERVERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install no-such-package"):
        require_binary("no-such-binary-dbbackup", "no-such-package")
    monkeypatch.setenv("DBBACKUP_TEST_REQUIRE_SERVERS", "1")
    with pytest.raises(pytest.fail.Exception, match="no-such-binary-dbbackup"):
        require_binary("no-such-binary-dbbackup", "no-such-package")
    assert require_binary("sh", "dash").name == "sh"


@pytest.mark.timeout(120)
def test_postgres_kill_and_restart_keep_data(pg_server: PostgresServer) -> None:
    # A private cluster: killing the session one would break other tests.
    with PostgresServer(bin_dir=pg_server.bin_dir) as server:
        server.execute("CREATE TABLE kept AS SELECT 1 AS one")
        server.execute("CHECKPOINT")
        conn = server.connect()
        server.kill()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
        server.start()
        server.restart()
        assert server.query("SELECT one FROM kept") == [(1,)]


@pytest.mark.timeout(120)
def test_servers_are_reaped_when_the_session_dies(tmp_path: Path) -> None:
    tests_dir = Path(__file__).resolve().parents[1]
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(tests_dir)!r})
        from harness import PostgresServer
        server = PostgresServer()
        server.start()
        print(server.postmaster_pid, server.base_dir, flush=True)
        os._exit(3)  # no cleanup, like a session killed by a timeout
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 3, done.stderr
    pid_text, base_dir = done.stdout.split()
    pid = int(pid_text)

    def postmaster_gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    deadline = time.monotonic() + 20
    while not (postmaster_gone() and not Path(base_dir).exists()):
        assert time.monotonic() < deadline, "orphaned server not cleaned up"
        time.sleep(0.1)
