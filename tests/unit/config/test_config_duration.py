"""Duration parsing and formatting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbbackup.config.duration import DurationError, format_duration, parse_duration

UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "min": 60, "m": 60, "s": 1}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("0", 0.0),
        ("45", 45.0),
        ("30s", 30.0),
        ("5min", 300.0),
        ("10m", 600.0),
        ("26h", 93600.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("1h30m", 5400.0),
        ("1h 30min 15s", 5415.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration_accepts_documented_forms(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "abc", "10x", "h", "1h-30m", "10M", "1e3s", "s10", "\u0661\u0660s", True, None, [1]],
)
def test_parse_duration_rejects_malformed_values(text: object) -> None:
    with pytest.raises(DurationError) as excinfo:
        parse_duration(text)
    assert "30s" in str(excinfo.value), "the error must name the allowed forms"


@pytest.mark.parametrize("value", [-1, -0.5, "-5s", "-1"])
def test_parse_duration_rejects_negative_values(value: object) -> None:
    with pytest.raises(DurationError, match="negative"):
        parse_duration(value)


def test_parse_duration_rejects_infinite_values() -> None:
    with pytest.raises(DurationError, match="too large"):
        parse_duration("9" * 400 + "s")
    with pytest.raises(DurationError):
        parse_duration(math.inf)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0"), (10, "10s"), (60, "1min"), (5400, "1h30min"), (86400, "1d"), (1.25, "1s250ms")],
)
def test_format_duration_is_compact(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(DurationError):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=10**12))
def test_integer_seconds_round_trip_through_format(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**9))
def test_bare_integer_strings_are_seconds(seconds: int) -> None:
    assert parse_duration(str(seconds)) == parse_duration(seconds) == seconds


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(UNIT_SECONDS))),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["", " "]),
)
def test_unit_parts_add_up(parts: list[tuple[int, str]], separator: str) -> None:
    text = separator.join(f"{count}{unit}" for count, unit in parts)
    assert parse_duration(text) == sum(count * UNIT_SECONDS[unit] for count, unit in parts)


@given(st.text(max_size=30))
def test_arbitrary_text_parses_or_raises_duration_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except DurationError:
        return
    assert seconds >= 0
    assert math.isfinite(seconds)
