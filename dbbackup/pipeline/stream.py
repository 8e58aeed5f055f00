"""Byte-stream plumbing shared by the pipeline stages.

Stages accept any object with ``read`` (a :class:`ByteSource`) or ``write``
(a :class:`ByteSink`): open files, a child's stdout, ``io.RawIOBase`` stages
such as :class:`~dbbackup.pipeline.checksum.HashingWriter`, or another stage,
so stages chain without adapters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dbbackup.errors import InternalError, IOFailure

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

CHUNK_SIZE = 1 << 20
"""Bytes moved per read/write: large enough for throughput, small enough to keep memory flat."""

PROGRESS_INTERVAL = 0.25
"""Seconds between progress callbacks: about four a second is smooth for a display and cheap."""


class ByteSource(Protocol):
    """Anything with ``read(n)``; ``None`` (non-blocking, no data) is rejected when seen."""

    def read(self, size: int = ..., /) -> bytes | None: ...


class ByteSink(Protocol):
    """Anything with ``write(data)`` returning the count written (``None`` is rejected)."""

    def write(self, data: ReadableBuffer, /) -> int | None: ...


def read_chunk(source: ByteSource, size: int) -> bytes:
    """Read up to ``size`` bytes; ``b""`` means end of stream."""
    data = source.read(size)
    if data is None:
        # Blocking I/O is the contract: a pipeline stage cannot poll.
        raise InternalError(
            "a pipeline source is in non-blocking mode",
            hint="open the source in blocking mode",
        )
    return data


def write_all(sink: ByteSink, data: ReadableBuffer) -> None:
    """Write every byte of ``data``, retrying short writes of raw files."""
    with memoryview(data) as whole:
        view = whole.cast("B")
        while view:
            written = sink.write(view)
            if written is None:
                raise InternalError(
                    "a pipeline sink is in non-blocking mode",
                    hint="open the destination in blocking mode",
                )
            if written <= 0:
                raise IOFailure(
                    "the destination accepted no bytes",
                    hint="check that the destination is writable and has free space",
                )
            if written >= len(view):
                return
            view = view[written:]


def copy_stream(
    src: ByteSource,
    dst: ByteSink,
    *,
    chunk: int = CHUNK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Copy ``src`` to ``dst`` until EOF, ``chunk`` bytes at a time; return the bytes copied.

    ``progress(bytes_so_far)`` is called at most every :data:`PROGRESS_INTERVAL`
    seconds, plus once at the end (even for an empty stream) unless the last
    call already reported the total.
    """
    if chunk <= 0:
        raise InternalError(f"copy chunk size must be positive, not {chunk}")
    total = 0
    reported: int | None = None
    last_report = time.monotonic()
    while data := read_chunk(src, chunk):
        write_all(dst, data)
        total += len(data)
        if progress is not None:
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL:
                progress(total)
                reported = total
                last_report = now
    if progress is not None and reported != total:
        progress(total)
    return total
