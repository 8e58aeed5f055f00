"""Measure what docs/capacity-planning.md reports: backup size and time per compression.

A throwaway PostgreSQL cluster gets a generated database of about 500 MB (set
with --rows); it is then backed up once per compression setting, and the
default setting is also encrypted, deep-verified and restored. Each line
printed is one measurement: the database's size on disk, the plain dump
size (what pg_dump and COPY produce), the stored size, and the wall time.

    .venv/bin/python scripts/capacity.py [--rows N] [--jobs N] [--quick]

--quick runs only the default setting (zstd 3), for a fast check of the
script. Everything lives in a temp directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import PostgresServer  # noqa: E402

DBBACKUP = str(Path(sys.executable).parent / "dbbackup")
COMMAND_TIMEOUT = 3600
MIB = 1024 * 1024

# A mix like an application's: keys and timestamps, short categorical text,
# free text, numbers, JSON documents, and indexes that a restore must rebuild.
SCHEMA_SQL = """
CREATE TABLE customers (
    id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, country char(2) NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers (id),
    status text NOT NULL, amount numeric(12, 2) NOT NULL, ordered_at timestamptz NOT NULL,
    note text
);
CREATE TABLE events (
    id bigint PRIMARY KEY, order_id bigint NOT NULL, kind text NOT NULL, at timestamptz NOT NULL,
    payload jsonb NOT NULL
);
CREATE INDEX ON orders (customer_id);
CREATE INDEX ON orders (ordered_at);
CREATE INDEX ON events (order_id);
"""

FILL_SQL = """
SELECT setseed(0.42);
INSERT INTO customers
    SELECT i, 'customer ' || i, 'c' || i || '@example.com',
           (ARRAY['DE','FR','US','GB','JP','BR','IN','NL'])[1 + i % 8],
           '2020-01-01'::timestamptz + i * interval '7 minutes'
    FROM generate_series(1, {customers}) i;
INSERT INTO orders
    SELECT i, 1 + (i::bigint * 7919) % {customers},
           (ARRAY['new','paid','shipped','delivered','returned'])[1 + i % 5],
           round((random() * 1000)::numeric, 2),
           '2023-01-01'::timestamptz + i * interval '13 seconds',
           CASE WHEN i % 3 = 0 THEN 'gift wrap, deliver after ' || (i % 24) || 'h, ref ' || md5(i::text) END
    FROM generate_series(1, {orders}) i;
INSERT INTO events
    SELECT i, 1 + i / 3, (ARRAY['created','paid','packed','shipped','delivered'])[1 + i % 5],
           '2023-01-01'::timestamptz + i * interval '5 seconds',
           jsonb_build_object('ip', '10.' || (random() * 255)::int || '.' || (random() * 255)::int || '.7',
                              'agent', 'client/' || (i % 40), 'session', md5(random()::text),
                              'items', i % 9 + 1)
    FROM generate_series(1, {events}) i;
ANALYZE;
"""

# (compression, level, encrypted): the first one is dbbackup's default.
SETTINGS = [
    ("zstd", 3, False),
    ("zstd", 3, True),
    ("zstd", 1, False),
    ("zstd", 9, False),
    ("lz4", 0, False),
    ("gzip", 6, False),
    ("xz", 6, False),
    ("none", 0, False),
]


def dbbackup(config: Path, *args: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [DBBACKUP, "--config", str(config), "--log-level", "warning", *args],
        env=env, timeout=COMMAND_TIMEOUT, check=False, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"dbbackup {args[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return time.monotonic() - started, done.stdout


def write_config(path: Path, server: PostgresServer, repo: Path, jobs: int, recipient: str = "") -> None:
    encryption = f'\n[encryption]\nrecipients = ["{recipient}"]\n' if recipient else ""
    path.write_text(
        f'engine = "postgres"\n\n[connection]\nhost = "127.0.0.1"\nport = {server.port}\n'
        f'user = "postgres"\n\n[storage]\nrepository = "{repo}"\n\n[backup]\njobs = {jobs}\n{encryption}',
        encoding="utf-8",
    )


def set_sizes(repo: Path, set_id: str) -> tuple[int, int]:
    """(plain bytes, stored bytes) of every object of the set, from its manifest."""
    manifest = json.loads(next(repo.glob(f"*/{set_id}/manifest.json")).read_text(encoding="utf-8"))
    objects = list(manifest.get("globals", []))
    for database in manifest["databases"]:
        objects += database["objects"]
    return sum(o["plain_bytes"] for o in objects), sum(o["stored_bytes"] for o in objects)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=600_000, help="rows in orders (default: about 500 MB)")
    parser.add_argument("--jobs", type=int, default=2, help="backup.jobs (default: 2)")
    parser.add_argument("--quick", action="store_true", help="only the default setting")
    options = parser.parse_args()
    os.umask(0o077)
    server = PostgresServer()
    server.start()
    workdir = Path(tempfile.mkdtemp(prefix="dbbackup-capacity-"))
    env = dict(os.environ, DBBACKUP_CONNECTION_PASSWORD=server.password)
    env.pop("PGPASSWORD", None)
    try:
        version = f"{server.version // 10000}.{server.version % 10000}"
        print(f"host: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"PostgreSQL {version}, backup.jobs = {options.jobs}", flush=True)  # fmt: skip
        started = time.monotonic()
        server.create_database("app")
        server.execute(SCHEMA_SQL, dbname="app")
        counts = {"customers": options.rows // 12, "orders": options.rows, "events": options.rows * 3}
        server.execute(FILL_SQL.format(**counts), dbname="app")
        db_bytes = int(server.query("SELECT pg_database_size('app')")[0][0])
        print(f"generated database 'app' in {time.monotonic() - started:.0f} s: {counts}, "
              f"{db_bytes / MIB:.0f} MiB on disk (pg_database_size)", flush=True)  # fmt: skip

        identity = workdir / "identity"
        keygen = subprocess.run([DBBACKUP, "key", "generate", "-o", str(identity)], env=env,
                                timeout=60, check=True, capture_output=True, text=True)  # fmt: skip
        recipient = keygen.stdout.split()[-1]
        print("\ncompression  level  encrypted  plain MiB  stored MiB  stored/db  stored/plain  "
              "backup s  MiB/s (db)", flush=True)  # fmt: skip
        for algorithm, level, encrypted in SETTINGS[:2] if options.quick else SETTINGS:
            repo = workdir / f"repo-{algorithm}-{level}-{int(encrypted)}"
            config = workdir / f"{repo.name}.toml"
            write_config(config, server, repo, options.jobs, recipient if encrypted else "")
            seconds, out = dbbackup(config, "backup", "--database", "app", "--compression", algorithm,
                                    "--compression-level", str(level), "--json", env=env)  # fmt: skip
            plain, stored = set_sizes(repo, json.loads(out)["id"])
            print(f"{algorithm:<11}  {level:>5}  {'yes' if encrypted else 'no':<9}  {plain / MIB:>9.1f}  "
                  f"{stored / MIB:>10.1f}  {stored / db_bytes:>9.3f}  {stored / plain:>12.3f}  "
                  f"{seconds:>8.1f}  {db_bytes / MIB / seconds:>10.1f}", flush=True)  # fmt: skip
            if (algorithm, level, encrypted) == ("zstd", 3, True):
                write_config(config, server, repo, options.jobs, recipient)
                with config.open("a", encoding="utf-8") as extra:
                    extra.write(f'identity_file = "{identity}"\n')
                verify_s, _ = dbbackup(config, "verify", "latest", "--deep", env=env)
                restore_s, _ = dbbackup(config, "restore", "latest", "--database", "app",
                                        "--target-db", "app_restored", env=env)  # fmt: skip
                print(f"    deep verify of that set: {verify_s:.1f} s; restore into a new database "
                      f"(data, then indexes and constraints): {restore_s:.1f} s", flush=True)  # fmt: skip
                server.execute("DROP DATABASE app_restored")
            shutil.rmtree(repo)
        return 0
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
