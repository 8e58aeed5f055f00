"""SQL scripts of the MySQL engine: built with a delimiter no statement holds, split back exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbbackup.engines.mysql import script
from dbbackup.errors import DataError

# Statements made of the bytes that matter to splitting: delimiters, newlines, quotes.
STATEMENT = st.lists(
    st.sampled_from([b";", b";;", b"$$", b"//", b"\n", b"'", b"x", b"\xff", b" "]), min_size=1
).map(b"".join)


@given(st.lists(STATEMENT, max_size=12))
def test_build_then_parse_gives_back_the_statements(statements: list[bytes]) -> None:
    kept = [s.strip() for s in statements if s.strip()]
    built = script.build(statements, ["a comment", "two\nlines"])
    assert script.parse(built) == kept


def test_the_delimiter_avoids_what_the_statements_contain() -> None:
    body = b"CREATE PROCEDURE p() BEGIN SELECT ';;'; SELECT '$$'; END"
    built = script.build([body, b"SELECT 1"])
    delimiter = built.split(b"\n")[0].removeprefix(b"DELIMITER ")
    assert delimiter == b"//"
    assert script.parse(built) == [body, b"SELECT 1"]


def test_a_script_is_what_the_mariadb_client_reads() -> None:
    built = script.build([b"SET NAMES utf8mb4", b"CREATE TABLE `t` (a int)"], ["dbbackup: test"])
    assert built == b"-- dbbackup: test\nDELIMITER ;;\nSET NAMES utf8mb4;;\nCREATE TABLE `t` (a int);;\n"


def test_a_script_cut_short_is_a_data_error() -> None:
    built = script.build([b"CREATE TABLE a (x int)", b"CREATE TABLE b (y int)"])
    with pytest.raises(DataError, match="cut short"):
        script.parse(built[:-5], name="pre-data")


def test_empty_scripts_hold_no_statements() -> None:
    assert script.parse(b"") == []
    assert script.parse(script.build([])) == []


def test_text_without_a_delimiter_line_is_refused() -> None:
    with pytest.raises(DataError, match="no DELIMITER line"):
        script.parse(b"CREATE TABLE t (a int);\n")
