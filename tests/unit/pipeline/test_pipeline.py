"""Stages chained as a backup and a restore use them: round trips, damage, flat memory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbbackup.errors import DataError
from dbbackup.pipeline.checksum import HashingReader, HashingWriter
from dbbackup.pipeline.compress import (
    ALGORITHMS,
    compressing_writer,
    decompressing_reader,
    level_range,
)

from .streams import GeneratedSource, backup, csv_rows, restore

POOL = csv_rows(8 << 20, seed=21)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_backup_and_restore_through_all_stages(algorithm: str, tmp_path: Path) -> None:
    source = HashingReader(GeneratedSource(3 << 20, POOL))
    path = tmp_path / "data"
    sha256, size, plain_size = backup(source, path, algorithm, level_range(algorithm)[0])
    assert plain_size == source.size == 3 << 20
    assert path.stat().st_size == size
    assert path.stat().st_mode & 0o777 == 0o600
    assert restore(path, algorithm, sha256, size) == (source.sha256_hex, plain_size)


def test_checksum_stage_catches_what_none_cannot(tmp_path: Path) -> None:
    path = tmp_path / "data"
    sha256, size, _ = backup(GeneratedSource(1 << 20, POOL), path, "none", 0)
    with path.open("r+b") as stored:
        stored.truncate(size - 10)
    with pytest.raises(DataError, match="truncated by 10 bytes"):
        restore(path, "none", sha256, size)


def test_damage_is_reported_by_the_first_stage_that_sees_it(tmp_path: Path) -> None:
    path = tmp_path / "data"
    sha256, size, _ = backup(GeneratedSource(2 << 20, POOL), path, "zstd", 3)
    with path.open("r+b") as stored:
        stored.seek(size // 2)
        byte = stored.read(1)
        stored.seek(size // 2)
        stored.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DataError, match="zstd data is corrupt"):
        restore(path, "zstd", sha256, size)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.binary(max_size=200_000),
    algorithm=st.sampled_from(ALGORITHMS),
    level_choice=st.integers(min_value=0, max_value=2),
    write_size=st.integers(min_value=1, max_value=70_000),
    read_size=st.integers(min_value=1, max_value=70_000),
    threads=st.sampled_from([1, 2]),
)
def test_random_bytes_round_trip(
    data: bytes, algorithm: str, level_choice: int, write_size: int, read_size: int, threads: int
) -> None:
    lowest, highest = level_range(algorithm)
    level = (lowest, (lowest + highest) // 2, highest)[level_choice]
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    with compressing_writer(algorithm, level, writer, threads=threads) as compressed:
        for start in range(0, len(data), write_size):
            compressed.write(data[start : start + write_size])
    stored = sink.getvalue()
    assert writer.size == len(stored)

    source = HashingReader(io.BytesIO(stored))
    reader = decompressing_reader(algorithm, source)
    parts = []
    while part := reader.read(read_size):
        assert len(part) <= read_size
        parts.append(part)
    assert b"".join(parts) == data
    source.verify(expected_sha256=writer.sha256_hex, expected_size=writer.size, name="random")


# The flat-memory check runs in a fresh interpreter, so its peak RSS is the pipeline's alone.
_FLAT_MEMORY_CHILD = """
import json, sys, time, tracemalloc
from pathlib import Path
from tests.unit.pipeline.streams import GeneratedSource, backup, csv_rows, restore
from dbbackup.pipeline.checksum import HashingReader

def peak_rss():
    # VmHWM belongs to this process image; ru_maxrss would include the forking parent's.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")

total, path = int(sys.argv[1]), Path(sys.argv[2])
pool = csv_rows(8 << 20, seed=21)
started = time.monotonic()
tracemalloc.start()
source = HashingReader(GeneratedSource(total, pool))
sha256, size, plain_size = backup(source, path, "zstd", 3)
plain_sha256, restored_size = restore(path, "zstd", sha256, size)
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({
    "same": plain_sha256 == source.sha256_hex and restored_size == plain_size == total,
    "stored": size,
    "traced_peak": peak,
    "max_rss": peak_rss(),
    "seconds": time.monotonic() - started,
}))
"""


def run_flat_memory_child(total: int, path: Path) -> dict[str, int | float | bool]:
    done = subprocess.run(
        [sys.executable, "-c", _FLAT_MEMORY_CHILD, str(total), str(path)],
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, int | float | bool] = json.loads(done.stdout)
    assert result["same"]
    return result


@pytest.mark.timeout(90)
def test_memory_stays_flat_for_200_mb(tmp_path: Path) -> None:
    small = run_flat_memory_child(64 << 20, tmp_path / "small.zst")
    large = run_flat_memory_child(200 << 20, tmp_path / "large.zst")
    assert large["stored"] < 100 << 20
    assert large["traced_peak"] < 64 << 20, large
    # Peak RSS covers what tracemalloc cannot see (zstd's own buffers and worker threads):
    # three times the data must not cost more memory.
    assert large["max_rss"] - small["max_rss"] < 16 << 20, (small, large)
    assert large["max_rss"] < 160 << 20, large
    assert large["seconds"] < 20, large
