"""Test doubles for pipeline stages: generated sources and counting or awkward sinks."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

from dbbackup.pipeline.checksum import HashingReader, HashingWriter
from dbbackup.pipeline.compress import compressing_writer, decompressing_reader, validate_level
from dbbackup.pipeline.stream import copy_stream

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

ROW_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")


def csv_rows(size: int, seed: int = 1) -> bytes:
    """About ``size`` bytes of CSV-like rows: compressible, but not trivially."""
    rnd = random.Random(seed)
    rows = []
    total = 0
    number = 0
    while total < size:
        row = (
            f"{number},2024-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d},"
            f"{rnd.choice(ROW_NAMES)},{rnd.randint(0, 10**7) / 100:.2f},"
            f"{rnd.getrandbits(40):010x}\n"
        ).encode()
        rows.append(row)
        total += len(row)
        number += 1
    return b"".join(rows)[:size]


class GeneratedSource(io.RawIOBase):
    """``total`` bytes cycled from a pool, produced on demand so the test holds no copy."""

    def __init__(self, total: int, pool: bytes) -> None:
        super().__init__()
        self._left = total
        self._pool = pool
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._left, len(self._pool) - self._offset)
        view[:count] = self._pool[self._offset : self._offset + count]
        self._offset = (self._offset + count) % len(self._pool)
        self._left -= count
        return count


class CountingSink(io.RawIOBase):
    """Discards what it is given, counting the bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        count = memoryview(data).nbytes
        self.count += count
        return count


class TrickleSink(io.RawIOBase):
    """Accepts at most ``limit`` bytes per write, like a raw pipe or socket may."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.received = bytearray()
        self.calls = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        self.calls += 1
        view = memoryview(data).cast("B")[: self.limit]
        self.received += view
        return len(view)


class TrickleSource(io.RawIOBase):
    """Returns at most ``limit`` bytes per read, like a pipe with a slow writer."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._limit, len(self._data))
        view[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


def compress_bytes(
    algorithm: str, data: bytes, level: int | None = None, *, threads: int = 1, piece: int = 70_001
) -> bytes:
    sink = io.BytesIO()
    with compressing_writer(algorithm, validate_level(algorithm, level), sink, threads=threads) as writer:
        for start in range(0, len(data), piece):
            writer.write(data[start : start + piece])
    return sink.getvalue()


def decompress_bytes(algorithm: str, stored: bytes, *, read_size: int = 65_536) -> bytes:
    reader = decompressing_reader(algorithm, io.BytesIO(stored), name="db1/data.bin")
    parts = []
    while part := reader.read(read_size):
        parts.append(part)
    return b"".join(parts)


def backup(source: io.RawIOBase, path: Path, algorithm: str, level: int) -> tuple[str, int, int]:
    """Store ``source`` compressed at ``path``; return (stored sha256, stored size, plain size)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(descriptor, "wb") as stored:
        hashing = HashingWriter(stored)
        with compressing_writer(algorithm, level, hashing, threads=2) as compressed:
            plain_size = copy_stream(source, compressed)
    return hashing.sha256_hex, hashing.size, plain_size


def restore(path: Path, algorithm: str, sha256: str, size: int) -> tuple[str, int]:
    """Read back the object at ``path``, verify it, and return (plain sha256, plain size)."""
    with path.open("rb") as stored:
        hashing = HashingReader(stored)
        plain = HashingWriter(CountingSink())
        copy_stream(decompressing_reader(algorithm, hashing, name=path.name), plain)
        hashing.verify(expected_sha256=sha256, expected_size=size, name=path.name)
    return plain.sha256_hex, plain.size
