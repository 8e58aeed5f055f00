"""What dbbackup writes, the standard tools read, and the other way round.

A DBA must be able to open a stored object with ``zstd -d`` and friends when
dbbackup itself is not at hand, and to restore objects made by those tools.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import require_binary

from dbbackup.pipeline.compress import level_range

from .streams import compress_bytes, csv_rows, decompress_bytes

DATA = csv_rows(400_000, seed=5)
TOOLS = {"zstd": "zstd", "gzip": "gzip", "xz": "xz", "lz4": "lz4"}
PACKAGES = {"zstd": "zstd", "gzip": "gzip", "xz": "xz-utils", "lz4": "lz4"}


def tool(algorithm: str) -> str:
    """The tool's path; skips (fails in CI) when it is not installed."""
    return str(require_binary(TOOLS[algorithm], PACKAGES[algorithm]))


def run_tool(argv: list[str], stdin: bytes) -> bytes:
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("algorithm", list(TOOLS))
def test_tool_decompresses_our_output_at_every_boundary_level(algorithm: str) -> None:
    command = tool(algorithm)
    for level in (None, *level_range(algorithm)):
        stored = compress_bytes(algorithm, DATA, level)
        assert run_tool([command, "-d", "-c"], stored) == DATA


def test_gzip_tool_reads_both_backends(gzip_backend: str) -> None:
    stored = compress_bytes("gzip", DATA, 6)
    assert run_tool([tool("gzip"), "-d", "-c"], stored) == DATA


def test_zstd_tool_reads_multithreaded_output() -> None:
    stored = compress_bytes("zstd", DATA * 10, 3, threads=2, piece=1 << 20)
    assert run_tool([tool("zstd"), "-d", "-c"], stored) == DATA * 10


@pytest.mark.parametrize(
    ("algorithm", "options"),
    [
        ("zstd", ["-3"]),
        ("zstd", ["-19", "--no-check"]),
        ("zstd", ["-T2", "--content-size"]),
        ("gzip", ["-6", "-n"]),
        ("xz", ["-6"]),
        ("xz", ["-1", "-T2", "--block-size=65536"]),
        ("lz4", ["-1"]),
        ("lz4", ["-9", "--content-size", "-B4"]),
    ],
)
def test_we_read_what_the_tool_writes(algorithm: str, options: list[str]) -> None:
    stored = run_tool([tool(algorithm), *options, "-c"], DATA)
    assert decompress_bytes(algorithm, stored) == DATA


@pytest.mark.parametrize("algorithm", list(TOOLS))
def test_tool_rejects_what_we_reject(algorithm: str, tmp_path: Path) -> None:
    """A cut object is an error for the tool as well: the formats, not just our reader, say so."""
    command = tool(algorithm)
    stored = compress_bytes(algorithm, DATA)
    cut = tmp_path / "cut"
    cut.write_bytes(stored[: len(stored) // 2])
    done = subprocess.run([command, "-d", "-c", str(cut)], capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
