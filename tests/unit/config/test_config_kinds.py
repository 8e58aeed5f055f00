"""Value kinds: conversion from TOML values and from environment/flag strings."""

from __future__ import annotations

import tomllib

import pytest

from dbbackup.config.kinds import (
    Boolean,
    Duration,
    FilePath,
    Integer,
    Location,
    Text,
    TextList,
    TimeZone,
    ValueProblem,
    toml_literal,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("yes", True), ("1", True), (" no ", False), ("0", False)],
)
def test_boolean_from_text(text: str, expected: bool) -> None:
    assert Boolean().from_text(text) is expected


@pytest.mark.parametrize("text", ["", "on", "2", "truthy"])
def test_boolean_from_text_rejects_other_words(text: str) -> None:
    with pytest.raises(ValueProblem, match="true, false, yes, no, 1, 0"):
        Boolean().from_text(text)


def test_boolean_from_toml_requires_a_boolean() -> None:
    assert Boolean().from_toml(False) is False
    with pytest.raises(ValueProblem, match="not a string"):
        Boolean().from_toml("true")


def test_integer_from_text_and_range() -> None:
    port = Integer(0, 65535)
    assert port.from_text(" 5432 ") == 5432
    assert port.from_text("+0") == 0
    for bad in ("", "5432.0", "0x10", "1_000", "five"):
        with pytest.raises(ValueProblem, match=r"an integer 0\.\.65535"):
            port.from_text(bad)
    with pytest.raises(ValueProblem, match="out of range"):
        port.from_text("65536")


def test_integer_rejects_booleans_and_floats() -> None:
    with pytest.raises(ValueProblem, match="not a boolean"):
        Integer(1).from_toml(True)
    with pytest.raises(ValueProblem, match="not a float"):
        Integer(1).from_toml(2.0)


def test_optional_integer_accepts_unset() -> None:
    level = Integer(optional=True)
    assert level.from_text("") is None
    assert level.from_toml(None) is None
    assert level.from_text("-3") == -3
    with pytest.raises(ValueProblem):
        Integer().from_toml(None)


def test_text_list_from_text_splits_on_commas() -> None:
    kind = TextList()
    assert kind.from_text("a, b ,c") == ("a", "b", "c")
    assert kind.from_text("a,,b,") == ("a", "b")
    assert kind.from_text("") == ()
    with pytest.raises(ValueProblem, match="non-empty array"):
        TextList(non_empty=True).from_text(" , ")


def test_text_list_from_toml_checks_items() -> None:
    assert TextList().from_toml(["x"]) == ("x",)
    with pytest.raises(ValueProblem, match="non-empty strings"):
        TextList().from_toml(["x", 1])
    with pytest.raises(ValueProblem, match="non-empty strings"):
        TextList().from_toml([""])
    with pytest.raises(ValueProblem, match="not a string"):
        TextList().from_toml("x")


def test_text_choices_suggest_a_close_value() -> None:
    kind = Text(("zstd", "gzip", "lz4"))
    assert kind.from_toml("lz4") == "lz4"
    with pytest.raises(ValueProblem, match='one of: zstd, gzip, lz4 \\(did you mean "gzip"\\?\\)'):
        kind.from_toml("gzp")


def test_paths_must_be_absolute_or_empty() -> None:
    assert FilePath().from_toml("") == ""
    assert FilePath().from_toml("/var/log/x.log") == "/var/log/x.log"
    with pytest.raises(ValueProblem, match="absolute path"):
        FilePath().from_toml("x.log")
    assert Location().from_toml("s3://bucket/prefix") == "s3://bucket/prefix"
    with pytest.raises(ValueProblem, match="absolute path or a URL"):
        Location().from_toml("")
    with pytest.raises(ValueProblem):
        Location().from_toml("repo")


@pytest.mark.parametrize("name", ["local", "utc", "UTC", "Europe/Berlin", "America/New_York"])
def test_timezone_accepts_known_names(name: str) -> None:
    assert TimeZone().from_toml(name) == name


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime", "Europe"])
def test_timezone_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ValueProblem, match="IANA time zone"):
        TimeZone().from_toml(name)


def test_timezone_suggests_close_name() -> None:
    with pytest.raises(ValueProblem, match='did you mean "Europe/Berlin"'):
        TimeZone().from_toml("Europe/Berln")


def test_duration_kind_writes_compact_strings() -> None:
    assert Duration().from_text("1h30m") == 5400.0
    assert Duration().to_toml(5400.0) == '"1h30min"'
    with pytest.raises(ValueProblem, match="negative"):
        Duration().from_toml(-1)


@pytest.mark.parametrize(
    "value", ["plain", 'quote " and \\ backslash', "tab\tnew\nline\x7f\x00", 3, 1.5, True, ["a", 2]]
)
def test_toml_literal_round_trips_through_tomllib(value: object) -> None:
    assert tomllib.loads(f"v = {toml_literal(value)}")["v"] == value


def test_dates_are_named_and_written_as_toml() -> None:
    value = tomllib.loads("v = 2024-05-01T10:00:00Z")["v"]
    assert toml_literal(value) == "2024-05-01T10:00:00+00:00"
    with pytest.raises(ValueProblem, match="not a date/time"):
        Text().from_toml(value)


def test_value_problems_never_repeat_the_value() -> None:
    secret = "hunter2-secret"
    for kind in (Integer(), Boolean(), Duration(), TextList(), FilePath(), Text(("a", "b"))):
        try:
            kind.from_text(secret)
        except ValueProblem as exc:
            assert secret not in str(exc)
