"""dbbackup against mysqldump | zstd and mydumper/myloader on a ~1 GB MariaDB database.

Builds tables whose sizes fall off harmonically (a few large, many small),
then times, on one throwaway server and with two threads where a tool has
threads:

- ``dbbackup backup --jobs 2`` and ``dbbackup restore --jobs 2`` (zstd level 3);
- ``mariadb-dump --single-transaction --quick | zstd -3 -T2`` and
  ``zstd -dc | mariadb`` (single-threaded by design);
- ``mydumper --threads 2 --compress`` and ``myloader --threads 2
  --enable-binlog`` (Debian's mydumper 0.10 compresses with gzip only).

Every restore is checked (same row count and CHECKSUM TABLE per table) before
its time counts. The password reaches the client tools through a 0600
defaults file and dbbackup through its environment, never a command line.

    .venv/bin/python bench/mysql_vs_mydumper.py [--size-gb 1.0] [--tables 16] [--workdir DIR] [--keep]

Needs the mariadb-server, mariadb-client, zstd and mydumper packages.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from common import (
    DBBACKUP,
    BenchError,
    human_bytes,
    machine_description,
    markdown_table,
    private_workdir,
    run_timed,
    write_result,
)
from harness import MariaDBServer  # common.py put tests/ on sys.path

ROW_BYTES = 260  # about, on disk, per generated row
THREADS = 2
TIMEOUT = 3600.0
SOURCE = "bench"

TABLE_SQL = """CREATE TABLE {name} (
    id BIGINT PRIMARY KEY, account INT NOT NULL, amount DECIMAL(12, 2), created DATETIME(3),
    status ENUM('new', 'paid', 'void'), email VARCHAR(80), note TEXT, digest VARBINARY(32),
    KEY (account)
) ENGINE = InnoDB"""
FILL_SQL = """INSERT INTO {name}
    SELECT seq, seq % 10007, seq / 7, '2020-01-01' + INTERVAL seq SECOND,
           ELT(1 + seq % 3, 'new', 'paid', 'void'),
           CONCAT('user', seq, '@example.org'),
           CONCAT(REPEAT(MD5(seq), 3), IF(seq % 10 = 0, '\\tline\\nbreak \\\\ ', ' plain text '), seq),
           UNHEX(SHA2(seq, 256))
    FROM seq_{first}_to_{last}"""


def table_rows(total_rows: int, tables: int) -> list[int]:
    """Harmonic shares: table i holds 1/i of the first one's rows."""
    weights = [1 / (index + 1) for index in range(tables)]
    scale = total_rows / sum(weights)
    return [max(1000, int(weight * scale)) for weight in weights]


def build(server: MariaDBServer, size_gb: float, tables: int) -> dict[str, Any]:
    server.create_database(SOURCE)
    rows = table_rows(int(size_gb * 1024**3 / ROW_BYTES), tables)
    for index, count in enumerate(rows):
        name = f"t{index:02d}"
        server.execute(TABLE_SQL.format(name=name), SOURCE)
        for first in range(1, count + 1, 500_000):
            last = min(count, first + 499_999)
            server.execute(FILL_SQL.format(name=name, first=first, last=last), SOURCE)
    return fingerprint(server, SOURCE)


def fingerprint(server: MariaDBServer, database: str) -> dict[str, Any]:
    names = [row[0] for row in server.query("SHOW TABLES", database)]
    result = {}
    for name in names:
        count = server.query(f"SELECT COUNT(*) FROM {name}", database)[0][0]
        checksum = server.query(f"CHECKSUM TABLE {name} EXTENDED", database)[0][1]
        result[name] = (count, checksum)
    return result


def check(server: MariaDBServer, database: str, expected: dict[str, Any], label: str) -> None:
    found = fingerprint(server, database)
    if found != expected:
        raise BenchError(f"{label} restored something else: {found} != {expected}")


def defaults_file(server: MariaDBServer, workdir: Path) -> Path:
    path = workdir / "client.cnf"
    lines = [
        f"host={server.host}",
        f"port={server.port}",
        f"user={server.user}",
        f'password="{server.password}"',
    ]
    text = "".join(f"[{group}]\n" + "\n".join(lines) + "\n" for group in ("client", "mydumper", "myloader"))
    path.touch(mode=0o600)
    path.write_text(text, encoding="utf-8")
    return path


def dbbackup_env(server: MariaDBServer, workdir: Path) -> tuple[Path, dict[str, str]]:
    config = workdir / "dbbackup.toml"
    config.write_text(
        "\n".join(
            [
                'engine = "mysql"',
                "[connection]",
                f'host = "{server.host}"',
                f"port = {server.port}",
                f'user = "{server.user}"',
                "[storage]",
                f'repository = "{workdir / "repo"}"',
                "[backup]",
                'compression = "zstd"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    runtime = workdir / "runtime"
    runtime.mkdir(mode=0o700)
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(workdir),
        "LC_ALL": "C.UTF-8",
        "RUNTIME_DIRECTORY": str(runtime),
        "DBBACKUP_CONNECTION_PASSWORD": server.password,
    }
    return config, env


def directory_size(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def run_dbbackup(server: MariaDBServer, workdir: Path, expected: dict[str, Any]) -> tuple[float, int, float]:
    config, env = dbbackup_env(server, workdir)
    base: list[str | Path] = [DBBACKUP, "--config", config, "--log-level", "warning"]
    backup = run_timed(
        [*base, "backup", "--json", "--database", SOURCE, "--jobs", str(THREADS)],
        env=env,
        timeout=TIMEOUT,
        label="dbbackup backup",
    )
    summary = json.loads(backup.stdout)
    restore = run_timed(
        [
            *base,
            "restore",
            summary["id"],
            "--database",
            SOURCE,
            "--target-db",
            "r_dbbackup",
            "--jobs",
            str(THREADS),
        ],
        env=env,
        timeout=TIMEOUT,
        label="dbbackup restore",
    )
    check(server, "r_dbbackup", expected, "dbbackup")
    server.drop_database("r_dbbackup")
    return backup.seconds, int(summary["stored_bytes"]), restore.seconds


def run_mysqldump(
    server: MariaDBServer, workdir: Path, cnf: Path, expected: dict[str, Any]
) -> tuple[float, int, float]:
    dump = workdir / "dump.sql.zst"
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    backup = run_timed(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"mariadb-dump --defaults-extra-file={cnf} --single-transaction --quick --routines --triggers "
            f"--events {SOURCE} | zstd -q -3 -T{THREADS} -o {dump}",
        ],
        env=env,
        timeout=TIMEOUT,
        label="mysqldump | zstd",
    )
    server.create_database("r_mysqldump")
    restore = run_timed(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"zstd -dc {dump} | mariadb --defaults-extra-file={cnf} r_mysqldump",
        ],
        env=env,
        timeout=TIMEOUT,
        label="zstd -dc | mariadb",
    )
    check(server, "r_mysqldump", expected, "mysqldump")
    server.drop_database("r_mysqldump")
    return backup.seconds, dump.stat().st_size, restore.seconds


def run_mydumper(
    server: MariaDBServer, workdir: Path, cnf: Path, expected: dict[str, Any]
) -> tuple[float, int, float]:
    out = workdir / "mydumper"
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    backup = run_timed(
        [
            "mydumper",
            f"--defaults-file={cnf}",
            "--threads",
            str(THREADS),
            "--compress",
            "-B",
            SOURCE,
            "-o",
            out,
        ],
        env=env,
        timeout=TIMEOUT,
        label="mydumper",
    )
    restore = run_timed(
        [
            "myloader",
            f"--defaults-file={cnf}",
            "--threads",
            str(THREADS),
            "--enable-binlog",
            "-d",
            out,
            "-s",
            SOURCE,
            "-B",
            "r_mydumper",
        ],
        env=env,
        timeout=TIMEOUT,
        label="myloader",
    )
    check(server, "r_mydumper", expected, "mydumper")
    server.drop_database("r_mydumper")
    return backup.seconds, directory_size(out), restore.seconds


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "-"


def report(results: dict[str, tuple[float, int, float]], size_gb: float, tables: int, data_bytes: int) -> str:
    ours = results["dbbackup (zstd-3, --jobs 2)"]
    rows = []
    for name, (backup, size, restore) in results.items():
        rows.append(
            [
                name,
                f"{backup:.1f}",
                human_bytes(size),
                f"{restore:.1f}",
                ratio(ours[0], backup),
                ratio(ours[1], size),
                ratio(ours[2], restore),
            ]
        )
    headers = ["tool", "backup s", "stored", "restore s", "backup ratio", "size ratio", "restore ratio"]
    return "\n".join(
        [
            "# dbbackup vs mysqldump and mydumper (MariaDB)",
            "",
            f"{tables} tables, {human_bytes(data_bytes)} of InnoDB data and indexes "
            f"(asked for {size_gb:g} GB), "
            f"{THREADS} threads where a tool has them. Ratio = dbbackup / tool (below 1.00: dbbackup faster "
            "or smaller). Every restore was checked table by table (row count and CHECKSUM TABLE).",
            "",
            markdown_table(headers, rows),
            "",
            f"Machine: {machine_description()}.",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--tables", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    for program in ("mariadb-dump", "mariadb", "zstd", "mydumper", "myloader"):
        if shutil.which(program) is None:
            raise BenchError(f"{program} is not installed")
    workdir = private_workdir(args.workdir, "bench-mysql-")
    server = MariaDBServer(["--innodb-buffer-pool-size=1G", "--innodb-log-file-size=1G"])
    server.start()
    try:
        print(f"building ~{args.size_gb:g} GB in {args.tables} tables ...", file=sys.stderr)
        expected = build(server, args.size_gb, args.tables)
        data_bytes = int(
            server.query(
                "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = %s",
                params=(SOURCE,),
            )[0][0]
        )
        cnf = defaults_file(server, workdir)
        results = {}
        print("dbbackup ...", file=sys.stderr)
        results["dbbackup (zstd-3, --jobs 2)"] = run_dbbackup(server, workdir, expected)
        print("mysqldump | zstd ...", file=sys.stderr)
        results["mysqldump \\| zstd -3 -T2"] = run_mysqldump(server, workdir, cnf, expected)
        print("mydumper/myloader ...", file=sys.stderr)
        results["mydumper/myloader -t 2 (gzip)"] = run_mydumper(server, workdir, cnf, expected)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(results, args.size_gb, args.tables, data_bytes)
    print(text)
    print(f"written to {write_result('mysql', text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
