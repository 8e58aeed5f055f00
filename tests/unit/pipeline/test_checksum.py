"""sha256 + size stages and sha256_file."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from dbbackup.errors import (
    EX_DATAERR,
    DataError,
    InputMissingError,
    InternalError,
    IOFailure,
    PermissionDeniedError,
)
from dbbackup.pipeline.checksum import HashingReader, HashingWriter, sha256_file

from .streams import TrickleSink, TrickleSource, csv_rows

DATA = csv_rows(300_000, seed=3)
DATA_SHA = hashlib.sha256(DATA).hexdigest()


class NonBlockingSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: object, /) -> None:
        return None


class FullSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: object, /) -> int:
        return 0


class NonBlockingSource(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> None:
        return None


# ----------------------------------------------------------------------------- writer


def test_writer_passes_bytes_and_hashes_them() -> None:
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    for start in range(0, len(DATA), 33_333):
        assert writer.write(DATA[start : start + 33_333]) == len(DATA[start : start + 33_333])
    assert sink.getvalue() == DATA
    assert writer.sha256_hex == DATA_SHA
    assert writer.size == len(DATA)


def test_writer_of_nothing_has_the_empty_digest() -> None:
    writer = HashingWriter(io.BytesIO())
    assert writer.sha256_hex == hashlib.sha256(b"").hexdigest()
    assert writer.size == 0


def test_writer_completes_short_writes_of_a_raw_sink() -> None:
    sink = TrickleSink(limit=1000)
    writer = HashingWriter(sink)
    writer.write(memoryview(DATA[:10_500]))
    assert bytes(sink.received) == DATA[:10_500]
    assert sink.calls == 11
    assert writer.size == 10_500


def test_writer_rejects_non_blocking_and_full_sinks() -> None:
    with pytest.raises(InternalError, match="non-blocking"):
        HashingWriter(NonBlockingSink()).write(b"abc")
    writer = HashingWriter(FullSink())
    with pytest.raises(IOFailure, match="accepted no bytes"):
        writer.write(b"abc")
    assert writer.size == 0  # nothing counted that did not reach the sink


def test_writer_close_leaves_sink_open_and_flush_reaches_it() -> None:
    flushed = []

    class Sink(io.BytesIO):
        def flush(self) -> None:
            flushed.append(True)
            super().flush()

    sink = Sink()
    writer = HashingWriter(sink)
    writer.write(b"abc")
    writer.flush()
    assert flushed
    writer.close()
    assert not sink.closed
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")


def test_writer_outliving_its_sink_closes_quietly() -> None:
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    writer.write(b"abc")
    sink.close()
    writer.close()  # must not flush the closed sink (nor complain when collected)
    assert writer.closed
    assert writer.size == 3


def test_writer_accepts_other_buffer_types() -> None:
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    writer.write(bytearray(b"ab"))
    writer.write(memoryview(b"cdef")[1:3])
    assert sink.getvalue() == b"abde"
    assert writer.sha256_hex == hashlib.sha256(b"abde").hexdigest()


# ----------------------------------------------------------------------------- reader


def test_reader_passes_bytes_and_verifies() -> None:
    reader = HashingReader(TrickleSource(DATA, 4_000))
    received = bytearray()
    while part := reader.read(10_000):
        received += part
    assert received == DATA
    assert reader.size == len(DATA)
    assert reader.sha256_hex == DATA_SHA
    reader.verify(expected_sha256=DATA_SHA, expected_size=len(DATA), name="db1/data")


def test_reader_readinto_and_readall() -> None:
    reader = HashingReader(io.BytesIO(DATA))
    buffer = bytearray(1_000)
    assert reader.readinto(buffer) == 1_000
    assert bytes(buffer) == DATA[:1_000]
    assert reader.read() == DATA[1_000:]
    reader.verify(expected_sha256=DATA_SHA.upper(), expected_size=len(DATA), name="x")


def test_verify_reads_the_unread_rest_first() -> None:
    reader = HashingReader(io.BytesIO(DATA))
    reader.read(10)
    reader.verify(expected_sha256=DATA_SHA, expected_size=len(DATA), name="x")
    assert reader.size == len(DATA)


def test_truncated_object_is_reported_with_the_missing_bytes() -> None:
    reader = HashingReader(io.BytesIO(DATA[:-100]))
    with pytest.raises(DataError) as caught:
        reader.verify(expected_sha256=DATA_SHA, expected_size=len(DATA), name="db1/data.zst")
    error = caught.value
    assert error.exit_code == EX_DATAERR
    assert "db1/data.zst" in error.message
    assert "truncated by 100 bytes" in error.message
    assert error.hint is not None and "dbbackup verify" in error.hint
    assert "another set" in error.hint


def test_extended_object_is_reported_with_the_extra_bytes() -> None:
    reader = HashingReader(io.BytesIO(DATA + b"12345"))
    with pytest.raises(DataError, match="extended by 5 bytes"):
        reader.verify(expected_sha256=DATA_SHA, expected_size=len(DATA), name="x")


def test_changed_byte_is_a_checksum_mismatch() -> None:
    damaged = bytearray(DATA)
    damaged[12_345] ^= 0x20
    reader = HashingReader(io.BytesIO(bytes(damaged)))
    with pytest.raises(DataError) as caught:
        reader.verify(expected_sha256=DATA_SHA, expected_size=len(DATA), name="db1/data.zst")
    assert caught.value.message.startswith("checksum mismatch in db1/data.zst: ")
    assert DATA_SHA in caught.value.message
    assert caught.value.hint is not None and "dbbackup verify" in caught.value.hint


def test_reader_rejects_non_blocking_source() -> None:
    with pytest.raises(InternalError, match="non-blocking"):
        HashingReader(NonBlockingSource()).read(10)


def test_reader_close_leaves_source_open() -> None:
    source = io.BytesIO(DATA)
    reader = HashingReader(source)
    reader.close()
    assert not source.closed
    with pytest.raises(ValueError, match="closed"):
        reader.read(1)


# ----------------------------------------------------------------------------- sha256_file


@pytest.mark.parametrize("chunk", [1, 4096, 1 << 20])
def test_sha256_file_matches_hashlib(tmp_path: Path, chunk: int) -> None:
    data = DATA if chunk > 1 else DATA[:5_000]
    path = tmp_path / "object"
    path.write_bytes(data)
    assert sha256_file(path, chunk=chunk) == (hashlib.sha256(data).hexdigest(), len(data))


def test_sha256_file_of_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert sha256_file(path) == (hashlib.sha256(b"").hexdigest(), 0)


def test_sha256_file_errors_map_to_exit_codes(tmp_path: Path) -> None:
    with pytest.raises(InputMissingError, match="does not exist"):
        sha256_file(tmp_path / "missing")
    with pytest.raises(IOFailure, match="cannot read"):
        sha256_file(tmp_path)  # a directory
    with pytest.raises(InternalError):
        sha256_file(tmp_path / "missing", chunk=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_sha256_file_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"x")
    path.chmod(0)
    with pytest.raises(PermissionDeniedError, match="permission denied"):
        sha256_file(path)
