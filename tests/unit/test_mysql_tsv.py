"""The LOAD DATA row format of MySQL/MariaDB table data: escaping, statements, line sizes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbbackup.engines.mysql import tsv
from dbbackup.engines.mysql.tsv import Column, RowSizeGuard, RowTooLarge


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


ROW = st.binary(max_size=60).map(tsv.escape)


@given(st.lists(ROW, min_size=1, max_size=30), st.integers(1, 17))
def test_row_size_estimates_never_fall_below_the_true_size(lines: list[bytes], chunk: int) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    guard = RowSizeGuard()
    for start in range(0, len(stream), chunk):
        guard.feed(stream[start : start + chunk])
    true_largest = max(len(tsv.unescape(line) or b"") for line in lines)
    longest_line = max(len(line) for line in lines)
    assert guard.largest <= longest_line
    if longest_line >= chunk:
        # Lines crossing a chunk boundary are always measured.
        crossing = [line for line in lines if len(line) >= chunk]
        assert guard.largest >= max(len(tsv.unescape(line) or b"") for line in crossing)
    assert true_largest <= longest_line


@given(st.lists(ROW, min_size=1, max_size=30), st.integers(1, 64), st.integers(1, 40))
def test_a_row_over_the_limit_stops_the_stream(lines: list[bytes], chunk: int, limit: int) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    guard = RowSizeGuard(limit)
    too_large = any(len(tsv.unescape(line) or b"") > limit for line in lines)
    try:
        for start in range(0, len(stream), chunk):
            guard.feed(stream[start : start + chunk])
    except RowTooLarge as exc:
        assert exc.size > limit
        # The estimate may run up to half the backslashes high, never low.
        assert any(len(line) > limit for line in lines)
        return
    assert not too_large


def test_the_refused_row_is_measured_to_its_end() -> None:
    guard = RowSizeGuard(10)
    guard.feed(b"1\tshort\n2\t")
    with pytest.raises(RowTooLarge) as refused:
        guard.feed(b"x" * 20)
    assert not refused.value.complete and refused.value.size == 22
    assert guard.rest_of_line(b"y" * 30) is None
    assert guard.rest_of_line(b"\\\\zz\nnext\n") == 22 + 30 + 3
