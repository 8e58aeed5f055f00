"""The LOAD DATA row format of MySQL/MariaDB table data: escaping, statements, line sizes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbbackup.engines.mysql import tsv
from dbbackup.engines.mysql.tsv import Column, LineTracker


@given(st.binary(max_size=300))
def test_escape_round_trips_every_byte_string(value: bytes) -> None:
    field = tsv.escape(value)
    assert b"\t" not in field and b"\n" not in field
    assert tsv.unescape(field) == value


@given(st.lists(st.one_of(st.none(), st.binary(max_size=50)), min_size=1, max_size=8))
def test_a_line_splits_back_into_its_values(values: list[bytes | None]) -> None:
    line = tsv.TAB.join(tsv.escape(v) for v in values)
    assert [tsv.unescape(field) for field in line.split(tsv.TAB)] == values


def test_null_and_the_text_backslash_n_stay_apart() -> None:
    assert tsv.escape(None) == b"\\N"
    assert tsv.escape(b"\\N") == b"\\\\N"
    assert tsv.unescape(b"\\\\N") == b"\\N"
    assert tsv.escape(b"") == b""


def test_column_kinds_decide_who_escapes() -> None:
    assert Column("a", "int").kind == "plain"
    assert Column("a", "datetime").kind == "plain"
    assert Column("a", "varchar").kind == "short"
    assert Column("a", "uuid").kind == "short"
    assert Column("a", "bit").kind == "short"
    assert Column("a", "longblob").kind == "long"
    assert Column("a", "json").kind == "long"
    # A type this code has never heard of is read raw: slower, never wrong.
    assert Column("a", "vector").kind == "long"


def test_fields_on_a_line_put_server_formatted_columns_first() -> None:
    columns = [
        Column("doc", "longtext"),
        Column("id", "int"),
        Column("pic", "mediumblob"),
        Column("n", "text"),
    ]
    assert [c.name for c in tsv.dump_order(columns)] == ["id", "n", "doc", "pic"]


def test_select_statement_escapes_strings_on_the_server_and_reads_long_values_raw() -> None:
    columns = [Column("b`q", "longblob"), Column("id", "int"), Column("name", "varchar")]
    statement = tsv.select_statement("d b", "t`1", columns)
    assert statement.endswith("FROM `d b`.`t``1`")
    assert "IFNULL(`id`, '\\\\N')" in statement
    # Binary, so no character set conversion; IF, so an overflow NULL is not taken for NULL.
    assert "IF(`name` IS NULL, '\\\\N', REPLACE(REPLACE(REPLACE(CAST(`name` AS BINARY)" in statement
    assert statement.index("CONCAT(") < statement.index("`b``q`")
    assert ", `b``q` FROM" in statement


def test_a_table_of_long_columns_only_has_no_server_part() -> None:
    statement = tsv.select_statement("d", "t", [Column("blob", "longblob")])
    assert statement == "SELECT `blob` FROM `d`.`t`"


def test_load_statement_names_columns_and_converts_json_through_a_variable() -> None:
    statement = tsv.load_statement("/dev/fd/7", "t", ["id", "doc"], converted=["doc"])
    assert statement.startswith("LOAD DATA LOCAL INFILE '/dev/fd/7' INTO TABLE `t` CHARACTER SET binary")
    assert "(`id`, @dbbackup_1) SET `doc` = CONVERT(@dbbackup_1 USING utf8mb4)" in statement
    assert "ESCAPED BY '\\\\'" in statement


@pytest.mark.parametrize("path", ["/etc/passwd", "/dev/fd/7'; DROP TABLE t; --", "/dev/fd/"])
def test_load_statement_takes_only_a_pipe_path(path: str) -> None:
    with pytest.raises(ValueError, match="not a pipe path"):
        tsv.load_statement(path, "t", ["id"])


@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=30), st.integers(1, 17))
def test_line_tracker_measures_lines_longer_than_a_chunk_exactly(lengths: list[int], chunk: int) -> None:
    stream = b"".join(b"x" * n + b"\n" for n in lengths)
    tracker = LineTracker()
    for start in range(0, len(stream), chunk):
        tracker.feed(stream[start : start + chunk])
    longest = max(lengths)
    if longest >= chunk:
        assert tracker.longest == longest
    assert tracker.longest <= longest
