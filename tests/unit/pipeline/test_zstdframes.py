"""The zstd frame tracker: complete frames pass, anything cut or malformed is an error."""

from __future__ import annotations

import io
import struct

import pytest
import zstandard

from dbbackup.errors import DataError
from dbbackup.pipeline.zstdframes import ZstdFrameTracker

from .streams import TrickleSource, csv_rows, decompress_bytes

DATA = csv_rows(300_000, seed=9)


def track(stored: bytes, *, piece: int = 1 << 20) -> ZstdFrameTracker:
    """Feed ``stored`` through a tracker to the end and return it."""
    tracker = ZstdFrameTracker(TrickleSource(stored, piece), name="obj", hint="hint")
    while tracker.read(piece):
        pass
    tracker.read(piece)
    return tracker


def skippable_frame(payload: bytes, variant: int = 0) -> bytes:
    return struct.pack("<II", 0x184D2A50 + variant, len(payload)) + payload


def one_shot(data: bytes, **options: object) -> bytes:
    return zstandard.ZstdCompressor(**options).compress(data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"level": 3, "write_checksum": True},
        {"level": 1, "write_checksum": False},
        {"level": 19, "write_checksum": True, "write_content_size": True},
        {"level": 3, "write_checksum": False, "write_content_size": False},
        {"level": 3, "write_dict_id": True},
    ],
)
def test_complete_frames_pass_in_any_read_pieces(options: dict[str, object]) -> None:
    stored = one_shot(DATA, **options)
    for piece in (1, 3, 4096, 1 << 20):
        tracker = track(stored, piece=piece)
        tracker.check_complete()
        assert tracker.frames == 1


@pytest.mark.parametrize("options", [{"write_checksum": True}, {"write_checksum": False}])
def test_every_cut_is_noticed(options: dict[str, object]) -> None:
    stored = one_shot(DATA[:20_000], level=3, **options)
    for cut in range(len(stored)):
        tracker = track(stored[:cut], piece=997)
        with pytest.raises(DataError, match=r"truncated|no zstd frame"):
            tracker.check_complete()


def test_small_and_empty_frames() -> None:
    for data in (b"", b"x", DATA[:100]):
        tracker = track(one_shot(data))
        tracker.check_complete()
        assert tracker.frames == 1


def test_skippable_frames_are_passed_over() -> None:
    stored = skippable_frame(b"meta" * 10) + one_shot(DATA) + skippable_frame(b"", variant=15)
    tracker = track(stored, piece=7)
    tracker.check_complete()
    assert tracker.frames == 1
    assert decompress_bytes("zstd", stored) == DATA


def test_cut_inside_skippable_frame_is_noticed() -> None:
    stored = one_shot(DATA[:100]) + skippable_frame(b"0123456789")
    with pytest.raises(DataError, match="skippable data"):
        track(stored[:-3]).check_complete()


def test_only_skippable_frames_is_not_a_stream() -> None:
    with pytest.raises(DataError, match="no zstd frame"):
        track(skippable_frame(b"abc")).check_complete()


def test_foreign_data_is_rejected_on_read() -> None:
    with pytest.raises(DataError, match="not zstd data"):
        track(b"\x1f\x8b\x08\x00" + bytes(20))


def test_reserved_descriptor_bit_is_rejected() -> None:
    stored = bytearray(one_shot(DATA[:100]))
    stored[4] |= 0x08
    with pytest.raises(DataError, match="reserved bit"):
        track(bytes(stored))


def test_reserved_block_type_is_rejected() -> None:
    stored = bytearray(one_shot(DATA[:1000], write_content_size=False, write_checksum=False))
    # Descriptor 0x00: window byte follows, no dictionary, no content size; block header at 6.
    assert stored[4] == 0x00
    stored[6] |= 0x06
    with pytest.raises(DataError, match="reserved type"):
        track(bytes(stored))


def test_check_before_source_end_is_an_error() -> None:
    stored = one_shot(DATA)
    tracker = ZstdFrameTracker(io.BytesIO(stored), name="obj", hint="hint")
    tracker.read(len(stored))
    with pytest.raises(DataError, match="stopped before the end"):
        tracker.check_complete()
