"""How fast ``dbbackup serve`` answers /metrics for an instance with 1000 backup sets.

The repository holds 1000 complete sets of three databases each (manifest, one
object per database, catalog entry), 1000 recorded runs (one in ten failed) and
100 verifications; no database server is needed. ``dbbackup serve`` runs as a
child process exactly as under systemd (it tells its URL through a real
NOTIFY_SOCKET), and every request goes over HTTP, including the configuration
reload each scrape does. The budget is 100 ms per scrape; the exit status is 1
when the median exceeds it.

Usage: ``.venv/bin/python bench/metrics_1000_sets.py [--sets 1000] [--requests 50]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import DBBACKUP, machine_description, markdown_table, private_workdir, write_result

from dbbackup import backupset
from dbbackup.backupset import DatabaseEntry, Manifest, StoredObject
from dbbackup.catalog import Catalog, SetSummary
from dbbackup.storage import LocalStorage

BUDGET_MS = 100.0
DATABASES = ("app", "crm", "billing")


def populate(repo: Path, sets: int) -> None:
    storage = LocalStorage(repo)
    summaries = []
    newest = datetime.now(UTC) - timedelta(hours=1)
    for n in range(sets):
        finished = newest - timedelta(hours=6 * n)
        started = finished - timedelta(minutes=20)
        set_id = backupset.new_set_id(started)
        entries = []
        for name in DATABASES:
            storage.prepare(f"main/{set_id}/{name}")
            with storage.writer(f"main/{set_id}/{name}/data.zst") as handle:
                handle.write(b"x" * 64)
            stored = StoredObject(f"{name}/data.zst", "table-data", 64, 640, "0" * 64, "zstd")
            entries.append(DatabaseEntry(name, name, {}, [stored]))
        manifest = Manifest(
            id=set_id, instance="main", engine="postgres", kind="full",
            started_at=backupset.iso(started), finished_at=backupset.iso(finished), timezone="utc",
            server_version="15.0", server_host="db", compression="zstd", compression_level=3,
            cluster=False, databases=entries,
        )  # fmt: skip
        backupset.write_manifest(storage, manifest)
        summaries.append(SetSummary.from_json(manifest.summary()))
    with Catalog.open(repo / "catalog.sqlite") as catalog:
        catalog.replace_all(summaries, instance="main")
        for n, summary in enumerate(summaries):
            ok = n % 10 != 0
            catalog.record_run(
                "main", list(DATABASES), ok, summary.started_at, summary.finished_at,
                None if ok else "connection refused", set_id=summary.id if ok else None,
            )  # fmt: skip
            if n % 10 == 0:
                catalog.record_verification(
                    summary.id, instance="main", databases=DATABASES, ok=True, mode="deep",
                    finished_at=summary.finished_at,
                )  # fmt: skip


def start_serve(config: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    notify_path = workdir / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBBACKUP_")}
    env.update(NOTIFY_SOCKET=str(notify_path), RUNTIME_DIRECTORY=str(workdir))
    proc = subprocess.Popen(
        [str(DBBACKUP), "--config", str(config), "--instance", "main", "serve", "--port", "0"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while True:
            fields = dict(line.split("=", 1) for line in listener.recv(4096).decode().splitlines())
            if fields.get("READY") == "1":
                return proc, fields["STATUS"].split()[1]
    finally:
        listener.close()


def scrape(url: str) -> tuple[float, int]:
    begun = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    return (time.perf_counter() - begun) * 1000, len(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    workdir = private_workdir(None, "dbbackup-bench-metrics-")
    try:
        repo = workdir / "repo"
        repo.mkdir(mode=0o700)
        begun = time.perf_counter()
        populate(repo, args.sets)
        print(f"wrote {args.sets} sets in {time.perf_counter() - begun:.1f} s", file=sys.stderr)
        config = workdir / "dbbackup.toml"
        config.write_text(f'engine = "postgres"\n[storage]\nrepository = "{repo}"\n')
        proc, url = start_serve(config, workdir)
        try:
            first_ms, size = scrape(url + "metrics")  # cold: the size cache is empty
            times = sorted(scrape(url + "metrics")[0] for _ in range(args.requests))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    median = statistics.median(times)
    p95 = times[max(0, int(len(times) * 0.95) - 1)]
    table = markdown_table(
        ("sets", "requests", "first (ms)", "median (ms)", "p95 (ms)", "max (ms)", "body (bytes)"),
        [
            (
                args.sets,
                args.requests,
                f"{first_ms:.1f}",
                f"{median:.1f}",
                f"{p95:.1f}",
                f"{times[-1]:.1f}",
                size,
            )
        ],
    )
    verdict = "within" if median <= BUDGET_MS else "OVER"
    report = (
        f"# /metrics with {args.sets} backup sets\n\n{machine_description()}\n\n{table}\n\n"
        f"Median {median:.1f} ms: {verdict} the {BUDGET_MS:.0f} ms budget.\n"
    )
    print(report)
    write_result("metrics_1000_sets", report)
    return 0 if median <= BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
