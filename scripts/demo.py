"""`make demo`: back up, verify and restore a sample database on a throwaway server.

Everything lives in a temporary directory that is removed at the end: a
PostgreSQL 15 cluster on a free loopback port, the repository, the config.
Each dbbackup command is printed before it runs, so this doubles as a tour.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import PostgresServer, pg_fingerprint  # noqa: E402

DBBACKUP = str(Path(sys.executable).parent / "dbbackup")

SAMPLE_SQL = """
CREATE SCHEMA sales;
CREATE SCHEMA inventory;
CREATE SCHEMA "Audit Log";
CREATE TABLE inventory.products (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    price numeric(10, 2) NOT NULL,
    price_with_tax numeric(10, 2) GENERATED ALWAYS AS (price * 1.19) STORED
);
CREATE TABLE sales.customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE sales.orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES sales.customers (id),
    product_id int NOT NULL REFERENCES inventory.products (id),
    quantity int NOT NULL CHECK (quantity > 0),
    ordered_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE "Audit Log"."Events" (id serial PRIMARY KEY, payload jsonb, note text);
CREATE INDEX ON sales.orders (customer_id);
CREATE FUNCTION sales.order_total(order_id bigint) RETURNS numeric
    LANGUAGE sql STABLE SET search_path = sales, inventory
    AS $$ SELECT o.quantity * p.price FROM orders o JOIN products p ON p.id = o.product_id
          WHERE o.id = order_id $$;
CREATE VIEW sales.big_orders AS SELECT * FROM sales.orders WHERE quantity > 5;
INSERT INTO inventory.products (name, price)
    SELECT 'product ' || i, (i % 97) + 0.99 FROM generate_series(1, 500) i;
INSERT INTO sales.customers (name, email)
    SELECT 'customer ' || i, 'c' || i || '@example.com' FROM generate_series(1, 5000) i;
INSERT INTO sales.orders (customer_id, product_id, quantity, ordered_at)
    SELECT 1 + i % 5000, 1 + i % 500, 1 + i % 9, '2026-01-01'::timestamptz + i * interval '1 minute'
    FROM generate_series(1, 100000) i;
INSERT INTO "Audit Log"."Events" (payload, note)
    SELECT jsonb_build_object('n', i), E'line one\\nline\\ttwo ' || repeat('x', i % 50)
    FROM generate_series(1, 2000) i;
ALTER DATABASE shop SET search_path = sales, inventory, public;
"""


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def dbbackup(config: Path, *args: str, env: dict[str, str]) -> None:
    print("$ dbbackup --config", config.name, shlex.join(args), flush=True)
    done = subprocess.run([DBBACKUP, "--config", str(config), *args], env=env, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"demo failed: dbbackup {args[0]} exited {done.returncode}")


def compare(server: PostgresServer) -> bool:
    source = pg_fingerprint(server, "shop")
    restored = pg_fingerprint(server, "shop_restored")
    print(f"{'table':<28}{'rows (source)':>15}{'rows (restored)':>17}  content")
    for name, facts in sorted(source["tables"].items()):
        other = restored["tables"].get(name, {})
        same = "identical" if facts == other else "DIFFERENT"
        print(f"{name:<28}{facts['rows']:>15}{other.get('rows', '-')!s:>17}  {same}")
    ok = source == restored
    total = server.query("SELECT sales.order_total(42)", dbname="shop_restored")[0][0]
    print(f"sales.order_total(42) in the restored database: {total}")
    print("schemas, functions, views, sequences, indexes, constraints:",
          "identical" if ok else "DIFFERENT")
    return ok


def main() -> int:
    os.umask(0o077)
    say("starting a throwaway PostgreSQL 15")
    server = PostgresServer()
    server.start()
    workdir = Path(tempfile.mkdtemp(prefix="dbbackup-demo-"))
    try:
        print(f"server on 127.0.0.1:{server.port}, work dir {workdir}")
        say("creating the sample database 'shop' (4 schemas, 105,500 rows)")
        server.create_database("shop")
        server.execute(SAMPLE_SQL, dbname="shop")
        config = workdir / "demo.toml"
        config.write_text(
            'engine = "postgres"\n\n[connection]\nhost = "127.0.0.1"\n'
            f'port = {server.port}\nuser = "postgres"\nconnect_timeout = "5s"\n\n'
            f'[storage]\nrepository = "{workdir / "repo"}"\n\n[backup]\ncompression = "zstd"\njobs = 2\n'
        )
        # The password travels in the environment, never on a command line.
        env = dict(os.environ, DBBACKUP_CONNECTION_PASSWORD=server.password)
        env.pop("PGPASSWORD", None)
        say("backing up")
        started = time.monotonic()
        dbbackup(config, "backup", "--database", "shop", env=env)
        print(f"({time.monotonic() - started:.1f} s)")
        say("verifying every object's sha256")
        dbbackup(config, "verify", "latest", env=env)
        say("listing backup sets")
        dbbackup(config, "list", env=env)
        say("restoring into a new database 'shop_restored'")
        dbbackup(config, "restore", "latest", "--database", "shop", "--target-db", "shop_restored", env=env)
        say("comparing source and restored database")
        ok = compare(server)
        say("result: " + ("the restored database matches the source" if ok else "MISMATCH"))
        return 0 if ok else 1
    finally:
        say("cleaning up")
        server.stop()
        subprocess.run(["rm", "-rf", "--", str(workdir)], check=False)
        print("removed the server and", workdir)


if __name__ == "__main__":
    sys.exit(main())
