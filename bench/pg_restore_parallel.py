"""dbbackup against pg_dump/pg_restore on one database of ~1.2 GB in ~200 tables.

One run, one throwaway server, the same database for every tool:

* backup:  ``pg_dump -Fc``  vs  ``dbbackup backup --jobs 2``   (time and size)
* restore: ``pg_restore -j 1`` / ``-j 2`` from the -Fc file
           vs ``dbbackup restore --jobs 1`` / ``--jobs 2``     (time)

Ratios are dbbackup / PostgreSQL tool: below 1 means dbbackup is faster or
smaller. Every restore is checked (tables and exact row counts) before its
time counts. The Markdown table goes to stdout and to
``bench/results/pg_restore_parallel.md``.

Usage: ``.venv/bin/python bench/pg_restore_parallel.py [--size-gb 1.2] [--tables 200]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common import (
    BenchError,
    Dbbackup,
    PostgresServer,
    client_env,
    human_bytes,
    machine_description,
    markdown_table,
    private_workdir,
    run_timed,
    start_server,
    tool,
    write_result,
)
from psycopg import sql

SOURCE = "bench_source"
# Heap tuple, line pointer and primary-key entry of one generated row, measured on PostgreSQL 15.
BYTES_PER_ROW = 127
BUILD_TIMEOUT = 3600.0
STEP_TIMEOUT = 3600.0

TABLE_SQL = """
CREATE TABLE {table} (
  id bigint NOT NULL,
  grp int NOT NULL,
  name text NOT NULL,
  amount numeric(12, 2) NOT NULL,
  at timestamptz NOT NULL,
  active boolean NOT NULL);
INSERT INTO {table}
  SELECT g, g % 97, md5(g::text || {seed}), (g::bigint * 7919 % 1000003) / 100.0,
         timestamptz '2024-01-01 00:00+00' + g * interval '37 seconds', g % 3 = 0
    FROM generate_series(1, {rows}) AS g;
ALTER TABLE {table} ADD PRIMARY KEY (id);
"""


@dataclass
class Plan:
    tables: list[tuple[str, int]]  # (name, rows)

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.tables)


def plan_tables(size_gb: float, count: int) -> Plan:
    """Harmonic sizes: one table holds ~1/6 of the data, the smallest ~1/1000 of it."""
    total_rows = int(size_gb * 1e9 / BYTES_PER_ROW)
    weights = [1 / (index + 1) for index in range(count)]
    scale = total_rows / sum(weights)
    return Plan([(f"t{index:03d}", max(100, int(weight * scale))) for index, weight in enumerate(weights)])


def build(server: PostgresServer, plan: Plan, jobs: int) -> float:
    """Create and fill the source database in ``jobs`` sessions; return the seconds taken."""
    begun = time.perf_counter()
    server.create_database(SOURCE)

    def create(item: tuple[str, int]) -> None:
        name, rows = item
        statement = sql.SQL(TABLE_SQL).format(
            table=sql.Identifier(name), seed=sql.Literal(name), rows=sql.Literal(rows)
        )
        server.execute(statement, SOURCE)

    # Largest first, so the two sessions finish together.
    ordered = sorted(plan.tables, key=lambda item: -item[1])
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(create, ordered))
    with server.connect(SOURCE) as conn:
        conn.execute("VACUUM (ANALYZE, FREEZE)")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - begun


def row_counts(server: PostgresServer, db: str) -> dict[str, int]:
    names = server.query(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace", db
    )
    with server.connect(db) as conn:
        counts = {}
        for (name,) in names:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()
            counts[str(name)] = int(row[0]) if row else -1
    return counts


@dataclass
class Measurement:
    seconds: float
    size: int | None = None


def timed_restore(
    server: PostgresServer, expected: dict[str, int], target: str, run: Callable[[str], float]
) -> Measurement:
    """Time one restore into ``target``, prove it complete, then drop it."""
    server.drop_database(target)
    try:
        seconds = run(target)
        if row_counts(server, target) != expected:
            raise BenchError(f"the restore into {target} does not hold the source's rows")
    finally:
        server.drop_database(target)
    with server.connect() as conn:
        conn.execute("CHECKPOINT")
    return Measurement(seconds)


class Contenders:
    """The commands being compared, on one server, one dump file and one repository."""

    def __init__(self, server: PostgresServer, workdir: Path) -> None:
        self.server = server
        self.env = client_env(server)
        self.dump_file = workdir / "source.dump"
        self.dbbackup = Dbbackup(server, workdir)

    def pg_dump(self) -> Measurement:
        argv: list[str | Path] = [tool(self.server, "pg_dump"), "-Fc", "-f", self.dump_file, "-d", SOURCE]
        timed = run_timed(argv, env=self.env, timeout=STEP_TIMEOUT, label="pg_dump -Fc")
        return Measurement(timed.seconds, self.dump_file.stat().st_size)

    def dbbackup_backup(self, jobs: int) -> Measurement:
        args = ("--database", SOURCE, "--jobs", str(jobs))
        seconds, summary = self.dbbackup.backup_json(*args, timeout=STEP_TIMEOUT)
        return Measurement(seconds, int(summary["stored_bytes"]))

    def pg_restore(self, jobs: int) -> Callable[[str], float]:
        def run(target: str) -> float:
            create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(target))
            self.server.execute(create)
            argv: list[str | Path] = [tool(self.server, "pg_restore"), "-j", str(jobs)]
            argv += ["-d", target, self.dump_file]
            return run_timed(argv, env=self.env, timeout=STEP_TIMEOUT, label=f"pg_restore -j {jobs}").seconds

        return run

    def dbbackup_restore(self, jobs: int) -> Callable[[str], float]:
        def run(target: str) -> float:
            args = ["restore", "latest", "--database", SOURCE, "--target-db", target, "--jobs", str(jobs)]
            label = f"dbbackup restore --jobs {jobs}"
            return self.dbbackup.run(*args, timeout=STEP_TIMEOUT, label=label).seconds

        return run


def measure(server: PostgresServer, workdir: Path, jobs: int) -> dict[str, Measurement]:
    tools = Contenders(server, workdir)
    expected = row_counts(server, SOURCE)
    results = {"pg_dump": tools.pg_dump(), "dbbackup backup": tools.dbbackup_backup(jobs)}
    for restore_jobs in (1, jobs):
        target = f"bench_restore_{restore_jobs}"
        # Alternate the tools so that a drifting machine hurts neither side alone.
        results[f"pg_restore -j {restore_jobs}"] = timed_restore(
            server, expected, target, tools.pg_restore(restore_jobs)
        )
        results[f"dbbackup restore --jobs {restore_jobs}"] = timed_restore(
            server, expected, target, tools.dbbackup_restore(restore_jobs)
        )
    return results


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs > 0 else "n/a"


def render(results: dict[str, Measurement], header: list[str], jobs: int) -> str:
    pairs = [
        ("backup", "pg_dump -Fc", "pg_dump", f"dbbackup backup --jobs {jobs}", "dbbackup backup"),
        ("restore, 1 job", "pg_restore -j 1", "pg_restore -j 1", "dbbackup restore --jobs 1",
         "dbbackup restore --jobs 1"),
        (f"restore, {jobs} jobs", f"pg_restore -j {jobs}", f"pg_restore -j {jobs}",
         f"dbbackup restore --jobs {jobs}", f"dbbackup restore --jobs {jobs}"),
    ]  # fmt: skip
    rows = []
    for operation, their_label, their_key, our_label, our_key in pairs:
        theirs, ours = results[their_key], results[our_key]
        size_ratio = ratio(ours.size, theirs.size) if ours.size and theirs.size else "-"
        rows.append(
            (
                operation,
                f"`{their_label}`",
                f"{theirs.seconds:.1f} s",
                human_bytes(theirs.size) if theirs.size else "-",
                f"`{our_label}`",
                f"{ours.seconds:.1f} s",
                human_bytes(ours.size) if ours.size else "-",
                ratio(ours.seconds, theirs.seconds),
                size_ratio,
            )
        )
    table = markdown_table(
        [
            "operation",
            "PostgreSQL tool",
            "time",
            "size",
            "dbbackup",
            "time",
            "size",
            "time ratio",
            "size ratio",
        ],
        rows,
    )
    return "\n".join(header) + "\n\n" + table + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gb", type=float, default=1.2, help="target database size in GB (default 1.2)")
    parser.add_argument("--tables", type=int, default=200, help="number of tables (default 200)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs compared with 1 (default 2)")
    parser.add_argument("--workdir", type=Path, help="where dumps and the repository go (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the dump file and repository")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    plan = plan_tables(args.size_gb, args.tables)
    workdir = private_workdir(args.workdir, "dbbackup-bench-")
    server = start_server()
    try:
        print(f"building {len(plan.tables)} tables, {plan.rows:,} rows ...", file=sys.stderr, flush=True)
        build_seconds = build(server, plan, args.jobs)
        size = int(server.query("SELECT pg_database_size(%s)", params=(SOURCE,))[0][0])
        print(
            f"built {human_bytes(size)} in {build_seconds:.0f} s; measuring ...", file=sys.stderr, flush=True
        )
        machine = machine_description()
        results = measure(server, workdir, args.jobs)
        version = server.query("SHOW server_version")[0][0]
        header = [
            "# PostgreSQL backup and restore: dbbackup vs pg_dump / pg_restore",
            "",
            f"- run: {datetime.now(UTC).isoformat(timespec='seconds')} on {machine}",
            f"- PostgreSQL {version}; database of {len(plan.tables)} tables, {plan.rows:,} rows, "
            f"{human_bytes(size)} (pg_database_size), built in {build_seconds:.0f} s",
            "- dbbackup compresses with zstd level 3; `pg_dump -Fc` with gzip level 6 (its default)",
            "- ratio = dbbackup / PostgreSQL tool: below 1 is faster or smaller; "
            "compare only numbers of one run (see bench/README.md)",
        ]
        text = render(results, header, args.jobs)
        print(text)
        path = write_result("pg_restore_parallel", text)
        print(f"written to {path}", file=sys.stderr)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
