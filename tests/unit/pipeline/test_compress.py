"""Compression stage: levels, round trips, damage detection, bounded output."""

from __future__ import annotations

import io
import tracemalloc

import pytest

from dbbackup.errors import EX_DATAERR, EX_USAGE, DataError, UsageError
from dbbackup.pipeline import compress
from dbbackup.pipeline.compress import (
    ALGORITHMS,
    compressing_writer,
    decompressing_reader,
    default_level,
    file_suffix,
    level_range,
    validate_level,
)

from .streams import TrickleSource, compress_bytes, csv_rows, decompress_bytes

COMPRESSED = tuple(a for a in ALGORITHMS if a != "none")
DATA = csv_rows(600_000)


# ----------------------------------------------------------------------------- levels


def test_level_table_matches_the_contract() -> None:
    assert ALGORITHMS == ("zstd", "gzip", "lz4", "xz", "none")
    assert {a: level_range(a) for a in ALGORITHMS} == {
        "zstd": (1, 19),
        "gzip": (1, 9),
        "lz4": (0, 16),
        "xz": (0, 9),
        "none": (0, 0),
    }
    assert {a: default_level(a) for a in ALGORITHMS} == {
        "zstd": 3,
        "gzip": 6,
        "lz4": 0,
        "xz": 6,
        "none": 0,
    }
    assert {a: file_suffix(a) for a in ALGORITHMS} == {
        "zstd": ".zst",
        "gzip": ".gz",
        "lz4": ".lz4",
        "xz": ".xz",
        "none": "",
    }


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_validate_level_accepts_bounds_and_defaults_none(algorithm: str) -> None:
    lowest, highest = level_range(algorithm)
    assert validate_level(algorithm, None) == default_level(algorithm)
    assert validate_level(algorithm, lowest) == lowest
    assert validate_level(algorithm, highest) == highest


@pytest.mark.parametrize(
    ("algorithm", "level", "hint"),
    [
        ("zstd", 25, "use 1..19"),
        ("zstd", 0, "use 1..19"),
        ("gzip", 10, "use 1..9"),
        ("gzip", 0, "use 1..9"),
        ("lz4", 17, "use 0..16"),
        ("lz4", -1, "use 0..16"),
        ("xz", 10, "use 0..9"),
        ("none", 1, "use 0"),
    ],
)
def test_out_of_range_level_names_the_valid_range(algorithm: str, level: int, hint: str) -> None:
    with pytest.raises(UsageError) as caught:
        validate_level(algorithm, level)
    assert caught.value.message == f"compression level {level} is out of range for {algorithm}"
    assert caught.value.hint is not None and caught.value.hint.startswith(hint)
    assert caught.value.exit_code == EX_USAGE


def test_exact_message_for_zstd_25() -> None:
    with pytest.raises(UsageError) as caught:
        validate_level("zstd", 25)
    assert str(caught.value) == "compression level 25 is out of range for zstd\nhint: use 1..19"


@pytest.mark.parametrize("level", [True, 3.0, "3"])
def test_non_integer_level_is_rejected(level: object) -> None:
    with pytest.raises(UsageError, match="not an integer"):
        validate_level("zstd", level)  # type: ignore[arg-type]


def test_unknown_algorithm_lists_the_known_ones() -> None:
    for call in (
        lambda: validate_level("brotli", 3),
        lambda: level_range("brotli"),
        lambda: default_level("brotli"),
        lambda: file_suffix("brotli"),
        lambda: decompressing_reader("brotli", io.BytesIO(b"")),
    ):
        with pytest.raises(UsageError) as caught:
            call()
        assert "'brotli'" in caught.value.message
        assert caught.value.hint == "use one of: zstd, gzip, lz4, xz, none"


def test_compressing_writer_rejects_bad_level_before_writing() -> None:
    sink = io.BytesIO()
    with pytest.raises(UsageError), compressing_writer("gzip", 12, sink):
        pass
    assert sink.getvalue() == b""


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("which", ["lowest", "default", "highest"])
def test_round_trip_at_level_boundaries(algorithm: str, which: str) -> None:
    lowest, highest = level_range(algorithm)
    level = {"lowest": lowest, "default": default_level(algorithm), "highest": highest}[which]
    data = DATA[:200_000]
    stored = compress_bytes(algorithm, data, level)
    if algorithm == "none":
        assert stored == data
    else:
        assert len(stored) < len(data) * 3 // 4
    assert decompress_bytes(algorithm, stored) == data


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_round_trip_of_empty_stream(algorithm: str) -> None:
    stored = compress_bytes(algorithm, b"")
    assert (stored == b"") == (algorithm == "none")
    assert decompress_bytes(algorithm, stored) == b""


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_round_trip_with_trickling_source_and_odd_read_sizes(algorithm: str) -> None:
    stored = compress_bytes(algorithm, DATA)
    reader = decompressing_reader(algorithm, TrickleSource(stored, 1_000))
    parts = []
    size = 1
    while part := reader.read(size):
        parts.append(part)
        size = size * 3 % 100_003 + 1
    assert b"".join(parts) == DATA


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_readinto_fills_caller_buffer(algorithm: str) -> None:
    reader = decompressing_reader(algorithm, io.BytesIO(compress_bytes(algorithm, DATA)))
    buffer = bytearray(50_000)
    received = bytearray()
    while count := reader.readinto(buffer):
        received += buffer[:count]
    assert received == DATA


def test_zstd_multithreaded_round_trip() -> None:
    data = DATA * 8
    stored = compress_bytes("zstd", data, 3, threads=2, piece=1 << 20)
    assert decompress_bytes("zstd", stored) == data


def test_gzip_backends_round_trip_every_level(gzip_backend: str) -> None:
    for level in range(1, 10):
        stored = compress_bytes("gzip", DATA, level)
        assert stored[:2] == b"\x1f\x8b"
        assert decompress_bytes("gzip", stored) == DATA


def test_gzip_written_by_one_backend_is_read_by_the_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if compress._isal_zlib is None:
        pytest.skip("isal is not installed")
    by_isal = compress_bytes("gzip", DATA, 6)
    monkeypatch.setattr(compress, "_isal_zlib", None)
    by_zlib = compress_bytes("gzip", DATA, 6)
    assert by_isal != by_zlib  # proves two different encoders ran
    assert decompress_bytes("gzip", by_isal) == DATA
    monkeypatch.undo()
    assert decompress_bytes("gzip", by_zlib) == DATA


@pytest.mark.parametrize("algorithm", COMPRESSED)
def test_concatenated_streams_are_all_read(algorithm: str) -> None:
    first, second = DATA[:100_000], DATA[100_000:250_000]
    stored = compress_bytes(algorithm, first) + compress_bytes(algorithm, second)
    assert decompress_bytes(algorithm, stored) == first + second


# ----------------------------------------------------------------------------- writer contract


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sink_is_flushed_but_not_closed(algorithm: str) -> None:
    sink = io.BytesIO()
    with compressing_writer(algorithm, default_level(algorithm), sink) as writer:
        writer.write(b"abc")
    assert not sink.closed
    assert writer.closed
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")


@pytest.mark.parametrize("algorithm", COMPRESSED)
def test_failure_inside_block_leaves_a_stream_the_reader_rejects(algorithm: str) -> None:
    sink = io.BytesIO()
    with (
        pytest.raises(RuntimeError, match="dump died"),
        compressing_writer(algorithm, default_level(algorithm), sink) as writer,
    ):
        writer.write(DATA)
        raise RuntimeError("dump died")
    assert not sink.closed
    assert writer.closed
    with pytest.raises(DataError, match="truncated"):
        decompress_bytes(algorithm, sink.getvalue())


# ----------------------------------------------------------------------------- damage


def cut_points(length: int) -> list[int]:
    return sorted({0, 1, 5, length // 10, length // 2, length * 9 // 10, length - 4, length - 1})


@pytest.mark.parametrize("algorithm", COMPRESSED)
def test_truncation_is_detected(algorithm: str) -> None:
    stored = compress_bytes(algorithm, DATA)
    for cut in cut_points(len(stored)):
        with pytest.raises(DataError) as caught:
            decompress_bytes(algorithm, stored[:cut])
        assert caught.value.exit_code == EX_DATAERR
        assert "db1/data.bin" in caught.value.message
        assert caught.value.hint is not None and "dbbackup verify" in caught.value.hint


@pytest.mark.parametrize("algorithm", COMPRESSED)
def test_flipped_byte_is_detected(algorithm: str) -> None:
    stored = compress_bytes(algorithm, DATA)
    for position in (
        0,
        len(stored) // 10,
        len(stored) // 3,
        len(stored) // 2,
        len(stored) * 7 // 10,
        len(stored) * 9 // 10,
        len(stored) - 1,
    ):
        damaged = bytearray(stored)
        damaged[position] ^= 0x40
        with pytest.raises(DataError):
            decompress_bytes(algorithm, bytes(damaged))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("algorithm", COMPRESSED)
def test_no_flipped_bit_anywhere_yields_different_data(algorithm: str) -> None:
    """Flip every byte of a small stream: each flip raises, or decodes to the original.

    The only flips that decode at all are in metadata no checksum covers and that does
    not change the content: the gzip header's flags/mtime/OS bytes and the zstd window
    size. The sha256 of the stored object catches those.
    """
    data = DATA[:3_000]
    stored = compress_bytes(algorithm, data)
    undetected = []
    for position in range(len(stored)):
        damaged = bytearray(stored)
        damaged[position] ^= 0x01
        try:
            decoded = decompress_bytes(algorithm, bytes(damaged))
        except DataError:
            continue
        assert decoded == data, f"flip at {position} changed the data silently"
        undetected.append(position)
    assert len(undetected) <= 7


@pytest.mark.parametrize("algorithm", COMPRESSED)
def test_trailing_garbage_is_detected(algorithm: str) -> None:
    stored = compress_bytes(algorithm, DATA[:50_000])
    with pytest.raises(DataError):
        decompress_bytes(algorithm, stored + b"garbage after the end")


@pytest.mark.parametrize("algorithm", COMPRESSED)
def test_empty_input_is_not_a_valid_stream(algorithm: str) -> None:
    with pytest.raises(DataError):
        decompress_bytes(algorithm, b"")


def test_none_cannot_detect_truncation_by_itself() -> None:
    assert decompress_bytes("none", DATA[:1000]) == DATA[:1000]


# ----------------------------------------------------------------------------- bounded output


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("algorithm", "megabytes"), [("zstd", 256), ("gzip", 64), ("lz4", 64), ("xz", 32)])
def test_highly_compressed_input_decodes_in_bounded_pieces(algorithm: str, megabytes: int) -> None:
    zeros = bytes(1 << 20)
    sink = io.BytesIO()
    with compressing_writer(algorithm, default_level(algorithm), sink) as writer:
        for _ in range(megabytes):
            writer.write(zeros)
    stored = sink.getvalue()
    assert len(stored) < (megabytes << 20) // 100

    tracemalloc.start()
    try:
        reader = decompressing_reader(algorithm, io.BytesIO(stored))
        total = 0
        largest = 0
        while piece := reader.read(1 << 20):
            total += len(piece)
            largest = max(largest, len(piece))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == megabytes << 20
    assert largest == 1 << 20
    # xz's decoder holds its 8 MiB dictionary; everything else stays near the chunk size.
    assert peak < 24 << 20
