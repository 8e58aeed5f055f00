"""Streaming compression stage: zstd, gzip, lz4, xz, or none.

:func:`compressing_writer` yields a file object whose bytes reach ``sink``
compressed; :func:`decompressing_reader` returns one that yields the
decompressed bytes of ``source``. Both work in bounded chunks, so memory does
not grow with the size of a database, and both accept any other stage as
their sink or source.

Every format written carries its own checksum (zstd and lz4 content
checksums, the gzip CRC-32, the xz CRC-64), and the reader insists on a
complete stream: a cut or damaged object raises :class:`DataError` instead of
returning short data. ``none`` cannot tell; the sha256 stage catches that.
"""

from __future__ import annotations

import importlib
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol, cast

import lz4.frame
import zstandard

from dbbackup.errors import DataError, UsageError
from dbbackup.pipeline.stream import CHUNK_SIZE, ByteSink, ByteSource, read_chunk, write_all
from dbbackup.pipeline.zstdframes import ZstdFrameTracker

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

ALGORITHMS: tuple[str, ...] = ("zstd", "gzip", "lz4", "xz", "none")

_LEVELS: dict[str, tuple[int, int, int]] = {
    # algorithm: (lowest, highest, default)
    "zstd": (1, 19, 3),
    "gzip": (1, 9, 6),
    "lz4": (0, 16, 0),
    "xz": (0, 9, 6),
    "none": (0, 0, 0),
}

_SUFFIXES = {"zstd": ".zst", "gzip": ".gz", "lz4": ".lz4", "xz": ".xz", "none": ""}

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # deflate in a gzip member: header, CRC-32 and size trailer

_DAMAGED_HINT = (
    "the stored object is damaged or incomplete: run `dbbackup verify` on the set, "
    "and restore from another set if it fails"
)


def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# ISA-L's deflate is several times faster than zlib at comparable ratios; it is optional.
_isal_zlib = _optional_module("isal.isal_zlib")

# ISA-L has four levels (0-3), of which 1-3 beat zlib's speed at zlib-like ratios. Levels 7-9
# ask for the smallest output regardless of time, which only zlib delivers, so they use zlib.
_ISAL_LEVEL_FOR_GZIP = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}


def _check_algorithm(algorithm: str) -> tuple[int, int, int]:
    try:
        return _LEVELS[algorithm]
    except KeyError:
        raise UsageError(
            f"unknown compression algorithm {algorithm!r}",
            hint=f"use one of: {', '.join(ALGORITHMS)}",
        ) from None


def level_range(algorithm: str) -> tuple[int, int]:
    """Lowest and highest level ``algorithm`` accepts."""
    lowest, highest, _ = _check_algorithm(algorithm)
    return lowest, highest


def default_level(algorithm: str) -> int:
    return _check_algorithm(algorithm)[2]


def validate_level(algorithm: str, level: int | None) -> int:
    """Return ``level`` (the default if ``None``); raise :class:`UsageError` if it is invalid."""
    lowest, highest, default = _check_algorithm(algorithm)
    if level is None:
        return default
    valid = f"{lowest}..{highest}" if lowest != highest else f"{lowest} or leave the level unset"
    if isinstance(level, bool) or not isinstance(level, int):
        raise UsageError(f"compression level {level!r} is not an integer", hint=f"use {valid}")
    if not lowest <= level <= highest:
        raise UsageError(f"compression level {level} is out of range for {algorithm}", hint=f"use {valid}")
    return level


def file_suffix(algorithm: str) -> str:
    """File name suffix for objects compressed with ``algorithm`` (``""`` for none)."""
    _check_algorithm(algorithm)
    return _SUFFIXES[algorithm]


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Encoder:
    """One compressed stream: ``header`` first, ``compress`` per chunk, ``finish`` at the end."""

    compress: Callable[[memoryview], ReadableBuffer]
    finish: Callable[[], bytes]
    header: bytes = b""


def _gzip_encoder(level: int, zlib_module: ModuleType | None) -> _Encoder:
    deflate: Any = zlib
    if zlib_module is not None and level in _ISAL_LEVEL_FOR_GZIP:
        deflate, level = zlib_module, _ISAL_LEVEL_FOR_GZIP[level]
    compressor = deflate.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
    return _Encoder(compress=compressor.compress, finish=compressor.flush)


def _make_encoder(algorithm: str, level: int, threads: int) -> _Encoder:
    if algorithm == "zstd":
        zstd = zstandard.ZstdCompressor(
            level=level, write_checksum=True, threads=threads if threads > 1 else 0
        ).compressobj()
        return _Encoder(
            compress=zstd.compress,
            finish=lambda: zstd.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH),
        )
    if algorithm == "gzip":
        return _gzip_encoder(level, _isal_zlib)
    if algorithm == "lz4":
        lz4_frame = lz4.frame.LZ4FrameCompressor(
            compression_level=level, content_checksum=True, block_checksum=True
        )
        return _Encoder(compress=lz4_frame.compress, finish=lz4_frame.flush, header=lz4_frame.begin())
    if algorithm == "xz":
        xz = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=level)
        return _Encoder(compress=xz.compress, finish=xz.flush)
    return _Encoder(compress=lambda view: view, finish=bytes)


class _CompressingRaw(io.RawIOBase):
    """Compresses what is written into ``sink``; only :meth:`finish` completes the stream."""

    def __init__(self, encoder: _Encoder, sink: ByteSink) -> None:
        super().__init__()
        self._encoder = encoder
        self._sink = sink
        if encoder.header:
            write_all(sink, encoder.header)

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        if self.closed:
            raise ValueError("write to a closed compressing writer")
        with memoryview(data) as whole:
            view = whole.cast("B")
            write_all(self._sink, self._encoder.compress(view))
            return len(view)

    def finish(self) -> None:
        """Write the end of the stream (trailer, checksum) and flush ``sink``."""
        if self.closed:
            raise ValueError("finish of a closed compressing writer")
        write_all(self._sink, self._encoder.finish())
        sink_flush = getattr(self._sink, "flush", None)
        if callable(sink_flush):
            sink_flush()


@contextmanager
def compressing_writer(algorithm: str, level: int, sink: ByteSink, *, threads: int = 1) -> Iterator[BinaryIO]:
    """Yield a writable binary file object that compresses into ``sink``.

    On normal exit the compressed stream is completed and ``sink`` flushed, but
    not closed. If the block raises, the stream is left without its end, so a
    reader reports it as truncated rather than taking it for a whole backup.
    ``threads`` applies to zstd only (worker threads; 1 or less means none).
    """
    level = validate_level(algorithm, level)
    raw = _CompressingRaw(_make_encoder(algorithm, level, threads), sink)
    buffered = io.BufferedWriter(raw, buffer_size=CHUNK_SIZE)
    try:
        yield buffered
        buffered.flush()
        raw.finish()
    finally:
        # Closing the raw object first keeps the buffered one from pushing its
        # remaining bytes into the compressor once the stream has been abandoned.
        raw.close()
        buffered.close()


# --------------------------------------------------------------------------- reading


class _Decoder(Protocol):
    """What the reader needs from a decompressor (the API of lzma and lz4.frame)."""

    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


class _ZlibDecoder:
    """Gives a zlib-style decompressor (``unconsumed_tail``) the lzma-style API."""

    def __init__(self, zlib_module: Any) -> None:
        self._inflate = zlib_module.decompressobj(_GZIP_WBITS)
        self._tail = b""

    @property
    def eof(self) -> bool:
        return bool(self._inflate.eof)

    @property
    def needs_input(self) -> bool:
        return not self._tail

    @property
    def unused_data(self) -> bytes:
        return bytes(self._inflate.unused_data)

    def decompress(self, data: bytes, max_length: int, /) -> bytes:
        pending = self._tail + data if self._tail else data
        output: bytes = self._inflate.decompress(pending, max_length)
        self._tail = self._inflate.unconsumed_tail
        return output


@dataclass(frozen=True)
class _Codec:
    algorithm: str
    new_decoder: Callable[[], _Decoder]
    errors: tuple[type[BaseException], ...]


class _DecompressingRaw(io.RawIOBase):
    """Decompresses ``source``; each ``readinto`` returns at most the caller's buffer size.

    Concatenated streams (gzip members, xz streams, lz4 frames) are read in turn,
    as the command-line tools do; anything else after a stream is an error.
    """

    def __init__(self, codec: _Codec, source: ByteSource, name: str) -> None:
        super().__init__()
        self._codec = codec
        self._source = source
        self._name = name
        self._decoder = codec.new_decoder()
        self._pending = b""
        self._source_done = False
        self._finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if self.closed:
            raise ValueError("read from a closed decompressing reader")
        with memoryview(buffer) as whole:
            view = whole.cast("B")
            while view and not self._finished:
                output = self._step(len(view))
                if output:
                    view[: len(output)] = output
                    return len(output)
        return 0

    def _read_source(self) -> bytes:
        if self._source_done:
            return b""
        data = read_chunk(self._source, CHUNK_SIZE)
        self._source_done = not data
        return data

    def _step(self, limit: int) -> bytes:
        """Advance the decompressor once; ``b""`` means no output yet (or the end)."""
        if self._decoder.eof:
            rest = self._decoder.unused_data or self._pending or self._read_source()
            self._pending = b""
            if not rest:
                self._finished = True
                return b""
            self._decoder = self._codec.new_decoder()
            self._pending = rest
        data = b""
        if self._decoder.needs_input:
            data = self._pending or self._read_source()
            self._pending = b""
        try:
            output = self._decoder.decompress(data, limit)
        except self._codec.errors as exc:
            raise DataError(
                f"{self._name}: {self._codec.algorithm} data is corrupt ({exc})",
                hint=_DAMAGED_HINT,
            ) from exc
        decoder = self._decoder
        if not (output or data or decoder.eof) and self._source_done and decoder.needs_input:
            raise DataError(
                f"{self._name}: {self._codec.algorithm} data ends in the middle of the stream (truncated)",
                hint=_DAMAGED_HINT,
            )
        return output


class _ZstdRaw(io.RawIOBase):
    """zstd reader: zstandard bounds the output, the frame tracker proves the input complete."""

    def __init__(self, source: ByteSource, name: str) -> None:
        super().__init__()
        self._name = name
        self._tracker = ZstdFrameTracker(source, name=name, hint=_DAMAGED_HINT)
        # zstandard only ever calls read() on its source, which the tracker provides.
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast("IO[bytes]", self._tracker),
            read_size=CHUNK_SIZE,
            read_across_frames=True,
            closefd=False,
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if self.closed:
            raise ValueError("read from a closed decompressing reader")
        try:
            count: int = self._reader.readinto(buffer)
        except zstandard.ZstdError as exc:
            raise DataError(f"{self._name}: zstd data is corrupt ({exc})", hint=_DAMAGED_HINT) from exc
        if count == 0 and len(memoryview(buffer)) > 0:
            self._tracker.check_complete()
        return count


class _PassThroughRaw(io.RawIOBase):
    def __init__(self, source: ByteSource) -> None:
        super().__init__()
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        with memoryview(buffer) as whole:
            view = whole.cast("B")
            data = read_chunk(self._source, len(view))
            view[: len(data)] = data
            return len(data)


def _codec(algorithm: str) -> _Codec:
    if algorithm == "gzip":
        inflate: Any = _isal_zlib if _isal_zlib is not None else zlib
        return _Codec("gzip", lambda: _ZlibDecoder(inflate), (zlib.error, inflate.error))
    if algorithm == "lz4":
        # lz4 reports damaged frames as RuntimeError.
        return _Codec("lz4", lz4.frame.LZ4FrameDecompressor, (RuntimeError,))
    return _Codec("xz", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ), (lzma.LZMAError,))


def decompressing_reader(
    algorithm: str, source: ByteSource, *, name: str = "compressed stream"
) -> io.BufferedReader:
    """Return a readable binary file object with the decompressed bytes of ``source``.

    Reading to EOF raises :class:`DataError` if the stream is truncated, damaged or
    followed by garbage. ``name`` (the object's name) is used in error messages.
    ``source`` is not closed.
    """
    _check_algorithm(algorithm)
    raw: io.RawIOBase
    if algorithm == "zstd":
        raw = _ZstdRaw(source, name)
    elif algorithm == "none":
        raw = _PassThroughRaw(source)
    else:
        raw = _DecompressingRaw(_codec(algorithm), source, name)
    return io.BufferedReader(raw, buffer_size=CHUNK_SIZE)
