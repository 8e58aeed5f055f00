"""copy_stream: bounded copy, exact counts, throttled progress."""

from __future__ import annotations

import io
import itertools
import time

import pytest

from dbbackup.errors import InternalError
from dbbackup.pipeline.checksum import copy_stream as reexported_copy_stream
from dbbackup.pipeline.stream import PROGRESS_INTERVAL, copy_stream

from .streams import CountingSink, GeneratedSource, TrickleSink, TrickleSource, csv_rows

DATA = csv_rows(250_000, seed=11)


class SlowSource(io.RawIOBase):
    """Yields ``pieces`` pieces of ``size`` bytes, sleeping ``delay`` seconds before each."""

    def __init__(self, pieces: int, size: int, delay: float) -> None:
        super().__init__()
        self._left = pieces
        self._size = size
        self._delay = delay

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        if not self._left:
            return b""
        self._left -= 1
        time.sleep(self._delay)
        return b"x" * min(size, self._size)


def test_copy_is_exact_and_counted() -> None:
    sink = io.BytesIO()
    assert copy_stream(TrickleSource(DATA, 3_000), sink, chunk=10_000) == len(DATA)
    assert sink.getvalue() == DATA


def test_copy_completes_short_writes() -> None:
    sink = TrickleSink(limit=777)
    assert copy_stream(io.BytesIO(DATA), sink) == len(DATA)
    assert bytes(sink.received) == DATA


def test_copy_of_empty_stream_reports_zero_once() -> None:
    calls: list[int] = []
    assert copy_stream(io.BytesIO(b""), io.BytesIO(), progress=calls.append) == 0
    assert calls == [0]


def test_fast_copy_reports_only_the_total() -> None:
    calls: list[int] = []
    started = time.monotonic()
    total = copy_stream(GeneratedSource(64 << 20, DATA), CountingSink(), progress=calls.append)
    elapsed = time.monotonic() - started
    assert total == 64 << 20
    assert calls[-1] == total
    assert calls == sorted(calls)
    assert len(calls) <= elapsed / PROGRESS_INTERVAL + 1


@pytest.mark.timeout(30)
def test_slow_copy_reports_about_four_times_a_second() -> None:
    calls: list[tuple[float, int]] = []
    started = time.monotonic()
    copy_stream(
        SlowSource(pieces=60, size=1000, delay=0.02),
        CountingSink(),
        progress=lambda count: calls.append((time.monotonic(), count)),
    )
    elapsed = time.monotonic() - started
    assert calls[-1][1] == 60_000
    assert 2 <= len(calls) <= elapsed / PROGRESS_INTERVAL + 1
    # The last call reports the total whenever the copy ends; the throttled ones keep their pace.
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(calls[:-1])]
    assert all(gap >= PROGRESS_INTERVAL * 0.9 for gap in gaps)


def test_chunk_must_be_positive() -> None:
    with pytest.raises(InternalError):
        copy_stream(io.BytesIO(b"x"), io.BytesIO(), chunk=0)


def test_checksum_module_offers_the_same_copy() -> None:
    assert reexported_copy_stream is copy_stream
