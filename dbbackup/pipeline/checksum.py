"""sha256 and byte count of what is stored, computed while it streams past.

The backup side wraps the final sink in a :class:`HashingWriter` and records
``sha256_hex`` and ``size`` in the manifest; the restore side wraps the stored
object in a :class:`HashingReader` and calls :meth:`HashingReader.verify` once
the stream is consumed, so a damaged object fails the restore loudly.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

from dbbackup.errors import (
    DataError,
    InputMissingError,
    InternalError,
    IOFailure,
    PermissionDeniedError,
)
from dbbackup.pipeline.stream import (
    CHUNK_SIZE,
    ByteSink,
    ByteSource,
    copy_stream,
    read_chunk,
    write_all,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["HashingReader", "HashingWriter", "copy_stream", "sha256_file"]

_VERIFY_HINT = (
    "the stored object is damaged or incomplete: run `dbbackup verify` on the set, "
    "and restore from another set if it fails"
)


class HashingWriter(io.RawIOBase):
    """Passes every byte through to ``sink`` and keeps their sha256 and count.

    Closing it does not close ``sink``: whoever opened the sink closes it.
    """

    def __init__(self, sink: ByteSink) -> None:
        super().__init__()
        self._sink = sink
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def sha256_hex(self) -> str:
        return self._hash.hexdigest()

    @property
    def size(self) -> int:
        return self._size

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        if self.closed:
            raise ValueError("write to a closed HashingWriter")
        with memoryview(data) as whole:
            view = whole.cast("B")
            write_all(self._sink, view)
            # Hash only after the sink took the bytes, so the digest never covers unwritten data.
            self._hash.update(view)
            self._size += len(view)
            return len(view)

    def flush(self) -> None:
        super().flush()
        # A sink its owner already closed has nothing pending; this also runs when
        # the writer is closed or collected after the sink.
        if getattr(self._sink, "closed", False):
            return
        sink_flush = getattr(self._sink, "flush", None)
        if callable(sink_flush):
            sink_flush()


class HashingReader(io.RawIOBase):
    """Passes bytes read from ``source`` through and keeps their sha256 and count.

    Closing it does not close ``source``.
    """

    def __init__(self, source: ByteSource) -> None:
        super().__init__()
        self._source = source
        self._hash = hashlib.sha256()
        self._size = 0
        self._at_eof = False

    @property
    def sha256_hex(self) -> str:
        return self._hash.hexdigest()

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        if self.closed:
            raise ValueError("read from a closed HashingReader")
        if size < 0:
            return self.readall()
        data = read_chunk(self._source, size) if size else b""
        self._account(data, requested=size)
        return data

    def readall(self) -> bytes:
        parts = []
        while data := self.read(CHUNK_SIZE):
            parts.append(data)
        return b"".join(parts)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        with memoryview(buffer) as whole:
            view = whole.cast("B")
            data = self.read(len(view))
            view[: len(data)] = data
            return len(data)

    def _account(self, data: bytes, *, requested: int) -> None:
        if data:
            self._hash.update(data)
            self._size += len(data)
        elif requested:
            self._at_eof = True

    def verify(self, *, expected_sha256: str, expected_size: int, name: str) -> None:
        """Check what was read against the manifest; raise :class:`DataError` on any difference.

        Any bytes not yet read are read (and discarded) first, so bytes appended to
        the object count as a mismatch too.
        """
        while not self._at_eof:
            self.read(CHUNK_SIZE)
        if self._size != expected_size:
            difference = self._size - expected_size
            how = f"truncated by {-difference} bytes" if difference < 0 else f"extended by {difference} bytes"
            raise DataError(
                f"size mismatch in {name}: {how} ({self._size} bytes read, {expected_size} expected)",
                hint=_VERIFY_HINT,
            )
        actual = self.sha256_hex
        if actual != expected_sha256.strip().lower():
            raise DataError(
                f"checksum mismatch in {name}: sha256 is {actual}, the manifest says {expected_sha256}",
                hint=_VERIFY_HINT,
            )


def sha256_file(path: Path, *, chunk: int = CHUNK_SIZE) -> tuple[str, int]:
    """Return the sha256 hex digest and size of the file at ``path``."""
    if chunk <= 0:
        raise InternalError(f"hash chunk size must be positive, not {chunk}")
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(chunk)
    try:
        with path.open("rb", buffering=0) as stream, memoryview(buffer) as view:
            while count := stream.readinto(view):
                digest.update(view[:count])
                size += count
    except FileNotFoundError as exc:
        raise InputMissingError(
            f"{path} does not exist", hint="check the path or the backup set name"
        ) from exc
    except PermissionError as exc:
        raise PermissionDeniedError(
            f"cannot read {path}: permission denied",
            hint="run as the dbbackup user or fix the file's owner and mode",
        ) from exc
    except OSError as exc:
        raise IOFailure(
            f"cannot read {path}: {exc.strerror or exc}",
            hint="check the disk and the file system for errors",
        ) from exc
    return digest.hexdigest(), size
