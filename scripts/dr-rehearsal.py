"""Rehearse docs/disaster-recovery.md on throwaway servers and print what each step says.

The runbook's sample output comes from this script: a PostgreSQL 15 cluster
with two databases and an application role is backed up (encrypted to an age
key) by instance "main"; the cluster is then destroyed, a new empty one takes
its place, and the instance is restored from the repository alone, step by
step, with the commands of the runbook. At the end the restored cluster is
compared with fingerprints taken before the disaster.

    .venv/bin/python scripts/dr-rehearsal.py

Everything lives in a temp directory that is removed at the end. Commands
run with DBBACKUP_CONFIG_DIR pointing at a stand-in for /etc/dbbackup.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import PostgresServer, pg_fingerprint, pg_roles  # noqa: E402

DBBACKUP = str(Path(sys.executable).parent / "dbbackup")
COMMAND_TIMEOUT = 600

SHOP_SQL = """
CREATE ROLE app LOGIN PASSWORD 'app-secret';
CREATE SCHEMA sales AUTHORIZATION app;
CREATE TABLE sales.customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE sales.orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES sales.customers (id),
    amount numeric(10, 2) NOT NULL CHECK (amount > 0),
    ordered_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON sales.orders (customer_id);
INSERT INTO sales.customers (name, email)
    SELECT 'customer ' || i, 'c' || i || '@example.com' FROM generate_series(1, 20000) i;
INSERT INTO sales.orders (customer_id, amount, ordered_at)
    SELECT 1 + i % 20000, (i % 500) + 0.99, '2026-01-01'::timestamptz + i * interval '1 minute'
    FROM generate_series(1, 200000) i;
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA sales TO app;
"""
CRM_SQL = """
CREATE TABLE contacts (id int PRIMARY KEY, name text, notes jsonb);
INSERT INTO contacts SELECT i, 'contact ' || i, jsonb_build_object('n', i) FROM generate_series(1, 5000) i;
"""


class Rehearsal:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.etc = workdir / "etc-dbbackup"
        self.repo = workdir / "repo"
        self.env = dict(os.environ, DBBACKUP_CONFIG_DIR=str(self.etc))
        self.env.pop("PGPASSWORD", None)

    def say(self, text: str) -> None:
        print(f"\n### {text}\n", flush=True)

    def dbbackup(self, *args: str, password: str = "", check: bool = True) -> int:
        print("$ dbbackup", shlex.join(args), flush=True)
        env = dict(self.env, DBBACKUP_CONNECTION_PASSWORD=password) if password else self.env
        done = subprocess.run(
            [DBBACKUP, *args], env=env, timeout=COMMAND_TIMEOUT, check=False, cwd=self.workdir,
            stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        print(done.stdout.replace(str(self.workdir), "/srv/dr").rstrip(), flush=True)
        if check and done.returncode != 0:
            raise SystemExit(f"rehearsal failed: dbbackup {args[0]} exited {done.returncode}")
        return done.returncode

    def write_instance(self, server: PostgresServer, recipient: str, identity: Path) -> None:
        instances = self.etc / "instances"
        instances.mkdir(parents=True, exist_ok=True)
        (instances / "main.toml").write_text(
            'engine = "postgres"\n\n[connection]\nhost = "127.0.0.1"\n'
            f'port = {server.port}\nuser = "postgres"\ndatabases = ["*"]\n\n'
            f'[storage]\nrepository = "{self.repo}"\n\n[backup]\ncompression = "zstd"\njobs = 2\n\n'
            f'[encryption]\nrecipients = ["{recipient}"]\nidentity_file = "{identity}"\n',
            encoding="utf-8",
        )


def snapshot(server: PostgresServer) -> dict[str, Any]:
    return {
        "shop": pg_fingerprint(server, "shop"),
        "crm": pg_fingerprint(server, "crm"),
        "roles": pg_roles(server),
    }


def main() -> int:
    os.umask(0o077)
    workdir = Path(tempfile.mkdtemp(prefix="dbbackup-dr-"))
    run = Rehearsal(workdir)
    old = PostgresServer()
    new = PostgresServer()
    try:
        old.start()
        old.create_database("shop")
        old.execute(SHOP_SQL, dbname="shop")
        old.create_database("crm")
        old.execute(CRM_SQL, dbname="crm")
        identity = workdir / "main.age-identity"
        keygen = subprocess.run(
            [DBBACKUP, "key", "generate", "-o", str(identity)], env=run.env, timeout=60,
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        recipient = keygen.stdout.split()[-1]
        run.write_instance(old, recipient, identity)

        run.say("before the disaster: the nightly whole-cluster backup")
        run.dbbackup("--instance", "main", "backup", "--all", password=old.password)
        before = snapshot(old)
        run.say("disaster: the server and its catalog are gone")
        old.stop()
        catalog = run.repo / "catalog.sqlite"
        for path in run.repo.glob("catalog.sqlite*"):
            path.unlink()
        print(f"(removed {catalog.name}; the repository keeps only backup sets)")

        new.start()
        # Restoring the roles gives the connecting superuser its password from the
        # backup; the runbook (step 3) has the new server use the old one from the start.
        new.execute(f"ALTER ROLE postgres PASSWORD '{old.password}'")
        new.password = old.password
        run.write_instance(new, recipient, identity)
        run.say("step 5: rebuild the catalog from the manifests")
        run.dbbackup("--instance", "main", "catalog", "rebuild")
        run.say("step 6: pick the set")
        run.dbbackup("--instance", "main", "list")
        run.dbbackup("--instance", "main", "show", "latest")
        run.say("step 7: prove the set before trusting it")
        run.dbbackup("--instance", "main", "verify", "latest", "--deep")
        run.say("step 8: the plan")
        run.dbbackup("--instance", "main", "restore", "latest", "--all", "--dry-run", password=new.password)
        run.say("step 9: restore")
        run.dbbackup("--instance", "main", "restore", "latest", "--all", password=new.password)
        run.say("step 10: check the result")
        checks = [
            ("SELECT count(*) FROM sales.orders", "shop"),
            ("SELECT count(*) FROM contacts", "crm"),
            ("SELECT rolname FROM pg_roles WHERE rolname = 'app'", "postgres"),
        ]
        for query, db in checks:
            print(f"{db}=# {query};  ->  {new.query(query, dbname=db)[0][0]}")
        # pg_restore leaves the planner without statistics until autovacuum gets there.
        assert new.bin_dir is not None
        vacuumdb = [str(new.bin_dir / "vacuumdb"), "-h", new.host, "-p", str(new.port), "-U", "postgres",
                    "--all", "--analyze-in-stages"]  # fmt: skip
        print("$", shlex.join(["vacuumdb", *vacuumdb[1:]]), flush=True)
        analyzed = subprocess.run(
            vacuumdb, env=dict(run.env, PGPASSWORD=new.password), timeout=COMMAND_TIMEOUT, check=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        print(analyzed.stdout.rstrip(), flush=True)
        after = snapshot(new)
        same = {name: before[name] == after[name] for name in before}
        print("fingerprints (schemas, rows, content, roles) equal to before the disaster:", same)
        run.say("step 11: back in service: a fresh backup of the new server, and the monitoring probe")
        run.dbbackup("--instance", "main", "backup", "--all", password=new.password)
        run.dbbackup("--instance", "main", "check", "--no-alert", password=new.password, check=False)
        return 0 if all(same.values()) else 1
    finally:
        old.stop()
        new.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
