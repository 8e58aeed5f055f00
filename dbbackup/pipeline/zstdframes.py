"""Follow zstd frame boundaries in a compressed stream as it is read.

zstandard's streaming decompressor returns whatever it decoded when its input
ends, even in the middle of a frame. :class:`ZstdFrameTracker` sits between
the source and the decompressor and parses just the frame layout (RFC 8878:
frame header, block headers, checksum, skippable frames) so the reader can
tell a complete stream from a cut one.
"""

from __future__ import annotations

from dbbackup.errors import DataError
from dbbackup.pipeline.stream import ByteSource, read_chunk

_FRAME_MAGIC = 0xFD2FB528
_SKIPPABLE_MAGIC = 0x184D2A50
_SKIPPABLE_MASK = 0xFFFFFFF0
_DICT_ID_SIZES = (0, 1, 2, 4)
# Frame_Content_Size field size by its flag; flag 0 means 1 byte in a single-segment frame.
_CONTENT_SIZE_SIZES = (0, 2, 4, 8)
_BLOCK_RLE = 1
_BLOCK_RESERVED = 3

# Parser states: the field being collected next.
_MAGIC = "magic"
_SKIPPABLE_SIZE = "skippable size"
_DESCRIPTOR = "frame header descriptor"
_HEADER_REST = "frame header"
_BLOCK_HEADER = "block header"
_CHECKSUM = "content checksum"


class ZstdFrameTracker:
    """A source wrapper whose ``read`` passes bytes through while parsing the frame layout."""

    def __init__(self, source: ByteSource, *, name: str, hint: str) -> None:
        self._source = source
        self._name = name
        self._hint = hint
        self._state = _MAGIC
        self._field_size = 4
        self._field = bytearray()
        self._skip = 0  # payload bytes to pass over before the next field
        self._frame_has_checksum = False
        self.frames = 0
        self.source_eof = False

    def read(self, size: int = -1, /) -> bytes:
        data = read_chunk(self._source, size)
        if data:
            self._feed(memoryview(data))
        else:
            self.source_eof = True
        return data

    def check_complete(self) -> None:
        """Raise :class:`DataError` unless the source ended right after a complete frame."""
        if not self.source_eof:
            # The decompressor stopped although input remains: it would be silently dropped.
            raise DataError(
                f"{self._name}: zstd decoding stopped before the end of the stored data",
                hint=self._hint,
            )
        if self._state != _MAGIC or self._field or self._skip:
            raise DataError(
                f"{self._name}: zstd data ends inside a frame's {self._where()} (truncated)",
                hint=self._hint,
            )
        if self.frames == 0:
            raise DataError(f"{self._name}: no zstd frame found (empty or truncated)", hint=self._hint)

    def _where(self) -> str:
        if self._skip:
            return "skippable data" if self._state == _MAGIC else "block data"
        return self._state

    def _feed(self, view: memoryview) -> None:
        position = 0
        end = len(view)
        while position < end:
            if self._skip:
                step = min(self._skip, end - position)
                self._skip -= step
                position += step
                continue
            take = min(self._field_size - len(self._field), end - position)
            self._field += view[position : position + take]
            position += take
            if len(self._field) == self._field_size:
                field = int.from_bytes(self._field, "little")
                self._field.clear()
                self._advance(field)

    def _expect(self, state: str, size: int) -> None:
        self._state = state
        self._field_size = size

    def _advance(self, field: int) -> None:
        if self._state == _MAGIC:
            self._on_magic(field)
        elif self._state == _SKIPPABLE_SIZE:
            self._skip = field
            self._expect(_MAGIC, 4)
        elif self._state == _DESCRIPTOR:
            self._on_descriptor(field)
        elif self._state == _HEADER_REST:
            self._expect(_BLOCK_HEADER, 3)
        elif self._state == _BLOCK_HEADER:
            self._on_block_header(field)
        else:  # _CHECKSUM
            self._end_frame()

    def _on_magic(self, magic: int) -> None:
        if magic == _FRAME_MAGIC:
            self._expect(_DESCRIPTOR, 1)
        elif magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
            self._expect(_SKIPPABLE_SIZE, 4)
        else:
            raise DataError(
                f"{self._name}: not zstd data where a frame should start (found 0x{magic:08x})",
                hint=self._hint,
            )

    def _on_descriptor(self, descriptor: int) -> None:
        content_size_flag = descriptor >> 6
        single_segment = bool(descriptor & 0x20)
        if descriptor & 0x08:
            raise DataError(
                f"{self._name}: zstd frame header has its reserved bit set (corrupt)",
                hint=self._hint,
            )
        self._frame_has_checksum = bool(descriptor & 0x04)
        content_size = _CONTENT_SIZE_SIZES[content_size_flag]
        if content_size_flag == 0 and single_segment:
            content_size = 1
        rest = (0 if single_segment else 1) + _DICT_ID_SIZES[descriptor & 0x03] + content_size
        if rest:
            self._expect(_HEADER_REST, rest)
        else:
            self._expect(_BLOCK_HEADER, 3)

    def _on_block_header(self, header: int) -> None:
        block_type = (header >> 1) & 0x03
        if block_type == _BLOCK_RESERVED:
            raise DataError(f"{self._name}: zstd block of reserved type (corrupt)", hint=self._hint)
        # An RLE block stores one byte, repeated Block_Size times when decoded.
        self._skip = 1 if block_type == _BLOCK_RLE else header >> 3
        if not header & 0x01:
            return
        if self._frame_has_checksum:
            self._expect(_CHECKSUM, 4)
        else:
            self._end_frame()

    def _end_frame(self) -> None:
        self.frames += 1
        self._expect(_MAGIC, 4)
