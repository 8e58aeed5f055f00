"""Many processes writing one catalog at once: nothing lost, nothing corrupt."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import stat
from pathlib import Path

import pytest

from dbbackup.catalog import Catalog, SetSummary

PROCESSES = 16
SETS_PER_PROCESS = 20


def upsert_sets(path: str, worker: int, start: multiprocessing.synchronize.Event) -> None:
    with Catalog.open(Path(path), busy_timeout=60) as catalog:
        if not start.wait(60):
            raise TimeoutError("the start signal never came")
        for number in range(SETS_PER_PROCESS):
            catalog.upsert(
                SetSummary(
                    id=f"w{worker:02d}-s{number:02d}",
                    instance=f"instance{worker % 3}",
                    kind="full",
                    engine="postgres",
                    databases=("app", f"db{number}"),
                    started_at=f"2026-11-27T14:{number:02d}:{worker:02d}+01:00",
                    finished_at=f"2026-11-27T14:{number:02d}:{worker:02d}+01:00",
                    stored_bytes=worker * 1000 + number,
                    encrypted=bool(number % 2),
                    location=f"instance{worker % 3}/w{worker:02d}-s{number:02d}",
                )
            )


@pytest.mark.timeout(180)
def test_sixteen_processes_upsert_into_one_catalog(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [
        context.Process(target=upsert_sets, args=(str(path), worker, start)) for worker in range(PROCESSES)
    ]
    old_umask = os.umask(0o077)
    try:
        for process in workers:
            process.start()
        start.set()
        for process in workers:
            process.join(150)
    finally:
        os.umask(old_umask)
        for process in workers:
            if process.is_alive():
                process.kill()
                process.join(10)
    assert [process.exitcode for process in workers] == [0] * PROCESSES

    with Catalog.open(path) as catalog:
        assert catalog.integrity_check() == "ok"
        expected = {
            f"w{worker:02d}-s{number:02d}"
            for worker in range(PROCESSES)
            for number in range(SETS_PER_PROCESS)
        }
        assert catalog.known_ids() == expected
        assert len(catalog.list()) == PROCESSES * SETS_PER_PROCESS
        assert len(catalog.list(database="app")) == PROCESSES * SETS_PER_PROCESS
        assert catalog.get("w07-s13").stored_bytes == 7013
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The last connection to close may delete the -wal/-shm files; any left must be 0600.
    for leftover in tmp_path.glob("catalog.db-*"):
        assert stat.S_IMODE(leftover.stat().st_mode) == 0o600, leftover
