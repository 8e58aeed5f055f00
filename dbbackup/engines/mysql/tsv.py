"""The row format of table data: LOAD DATA's tab-separated text.

One line per row, fields separated by TAB, ``\\N`` for NULL, and inside a
field only three bytes escaped: backslash, TAB and newline (``\\\\``, ``\\t``,
``\\n``). Every other byte, NUL and invalid UTF-8 included, is stored as the
server holds it (``CHARACTER SET binary`` on both ends), so latin1, utf16 and
binary columns survive unchanged.

Most columns are formatted by the server in one expression per row, which is
several times faster than decoding each field in Python. Long values
(MEDIUM/LONG TEXT and BLOB, JSON, spatial types) are read raw and escaped
here: the server builds string results only up to its max_allowed_packet,
while a raw column value of any size streams out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dbbackup.engines.mysql.connection import quote_ident

# Types whose text form never holds a backslash, TAB or newline.
PLAIN_TYPES = frozenset(
    {
        "tinyint",
        "smallint",
        "mediumint",
        "int",
        "integer",
        "bigint",
        "decimal",
        "numeric",
        "float",
        "double",
        "real",
        "year",
        "date",
        "time",
        "datetime",
        "timestamp",
    }
)
# Short values: at most 64 KiB each, so the server-side escaping stays small.
# MariaDB's uuid and inet types go as their binary form: LOAD DATA with
# CHARACTER SET binary hands them over as binary, which they take as is.
SHORT_STRING_TYPES = frozenset(
    {
        "char",
        "varchar",
        "binary",
        "varbinary",
        "tinytext",
        "text",
        "tinyblob",
        "blob",
        "enum",
        "set",
        "bit",
        "uuid",
        "inet4",
        "inet6",
    }
)

NULL_FIELD = b"\\N"
TAB = b"\t"
NEWLINE = b"\n"


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str  # information_schema.COLUMNS.DATA_TYPE, lower case

    @property
    def kind(self) -> str:
        """``plain``, ``short`` (escaped by the server) or ``long`` (escaped here)."""
        if self.data_type in PLAIN_TYPES:
            return "plain"
        if self.data_type in SHORT_STRING_TYPES:
            return "short"
        return "long"


def dump_order(columns: Sequence[Column]) -> list[Column]:
    """Columns in the order their fields appear on a line: server-formatted first."""
    return [c for c in columns if c.kind != "long"] + [c for c in columns if c.kind == "long"]


def _server_field(column: Column) -> str:
    name = quote_ident(column.name)
    if column.data_type == "float":
        # FLOAT prints 6 digits and would come back rounded; as DOUBLE it prints exactly.
        return f"IFNULL({name} + 0e0, '\\\\N')"
    if column.kind == "plain":
        return f"IFNULL({name}, '\\\\N')"
    # CAST AS BINARY: no conversion to the connection's character set, and the
    # escaping works byte by byte. IF, not IFNULL: a REPLACE that overflows
    # max_allowed_packet returns NULL, which must not pass for a NULL value.
    escaped = f"CAST({name} AS BINARY)"
    for raw, replacement in (("\\\\", "\\\\\\\\"), ("\\t", "\\\\t"), ("\\n", "\\\\n")):
        escaped = f"REPLACE({escaped}, '{raw}', '{replacement}')"
    return f"IF({name} IS NULL, '\\\\N', {escaped})"


def select_statement(database: str, table: str, columns: Sequence[Column]) -> str:
    """The SELECT whose rows are (server-formatted part or NULL, raw long value, ...)."""
    ordered = dump_order(columns)
    short = [c for c in ordered if c.kind != "long"]
    long = [c for c in ordered if c.kind == "long"]
    parts = []
    if short:
        parts.append("CONCAT(" + ", '\\t', ".join(_server_field(c) for c in short) + ")")
    parts += [quote_ident(c.name) for c in long]
    if not parts:
        parts = ["''"]
    # Identifiers are quoted; nothing else in the statement comes from outside.
    return f"SELECT {', '.join(parts)} FROM {quote_ident(database)}.{quote_ident(table)}"  # noqa: S608


def escape(value: bytes | None) -> bytes:
    """One raw value as a field."""
    if value is None:
        return NULL_FIELD
    if b"\\" in value:
        value = value.replace(b"\\", b"\\\\")
    if b"\t" in value:
        value = value.replace(b"\t", b"\\t")
    if b"\n" in value:
        value = value.replace(b"\n", b"\\n")
    return value


def unescape(field: bytes) -> bytes | None:
    """The inverse of :func:`escape` (used by tests and tools, not by restores)."""
    if field == NULL_FIELD:
        return None
    out = bytearray()
    index = 0
    while index < len(field):
        byte = field[index : index + 1]
        if byte == b"\\" and index + 1 < len(field):
            nxt = field[index + 1 : index + 2]
            out += {b"t": b"\t", b"n": b"\n", b"0": b"\0", b"r": b"\r", b"Z": b"\x1a"}.get(nxt, nxt)
            index += 2
            continue
        out += byte
        index += 1
    return bytes(out)


def load_statement(path: str, table: str, columns: Sequence[str], converted: Sequence[str] = ()) -> str:
    """LOAD DATA LOCAL for a stream in this format; ``converted`` columns go through a variable.

    MySQL 8 refuses binary-charset text for JSON columns, so those are read
    into a user variable and converted to utf8mb4 on the way in.
    """
    if not path.startswith("/dev/fd/") or not path[len("/dev/fd/") :].isdigit():
        raise ValueError(f"not a pipe path: {path!r}")
    targets = []
    assignments = []
    for index, name in enumerate(columns):
        if name in converted:
            targets.append(f"@dbbackup_{index}")
            assignments.append(f"{quote_ident(name)} = CONVERT(@dbbackup_{index} USING utf8mb4)")
        else:
            targets.append(quote_ident(name))
    statement = (
        f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {quote_ident(table)} CHARACTER SET binary "
        "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
        f"({', '.join(targets)})"
    )
    if assignments:
        statement += " SET " + ", ".join(assignments)
    return statement


class RowTooLarge(Exception):
    """A row in a stream is larger than the limit it was fed under."""

    def __init__(self, size: int, limit: int, *, complete: bool) -> None:
        super().__init__(
            f"a row of {'' if complete else 'more than '}about {size} bytes exceeds {limit} bytes"
        )
        self.size = size
        self.limit = limit
        self.complete = complete


class RowSizeGuard:
    """Refuses a stream the moment one of its rows grows past ``limit`` bytes (0: no limit).

    A row's size is taken from its line, counting every backslash as half a
    byte: an escape sequence is two bytes for one, an escaped backslash two
    backslashes for one, so the estimate is never below the true size and
    never above the line's length. Only lines that cross a chunk boundary can
    be longer than a chunk, so for limits of a chunk or more the rest of a
    chunk is never looked at in Python.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.largest = 0
        self._length = 0  # of the line not finished yet
        self._backslashes = 0

    def feed(self, chunk: bytes) -> None:
        first = chunk.find(NEWLINE)
        if first < 0:
            self._grow(chunk)
            return
        self._check(self._length + first - (self._backslashes + chunk.count(b"\\", 0, first)) // 2, True)
        last = chunk.rfind(NEWLINE)
        if self.limit and self.limit < len(chunk):
            start = first + 1
            while start <= last:
                end = chunk.find(NEWLINE, start)
                self._check(end - start - chunk.count(b"\\", start, end) // 2, True)
                start = end + 1
        self._length = self._backslashes = 0
        self._grow(chunk[last + 1 :])

    def rest_of_line(self, chunk: bytes) -> int | None:
        """Measure the unfinished line on; its size once this chunk ends it, else None."""
        end = chunk.find(NEWLINE)
        part = chunk if end < 0 else chunk[:end]
        self._length += len(part)
        self._backslashes += part.count(b"\\")
        return None if end < 0 else self._length - self._backslashes // 2

    @property
    def unfinished(self) -> int:
        return self._length - self._backslashes // 2

    def _grow(self, part: bytes) -> None:
        self._length += len(part)
        self._backslashes += part.count(b"\\")
        self._check(self.unfinished, False)

    def _check(self, size: int, complete: bool) -> None:
        self.largest = max(self.largest, size)
        if self.limit and size > self.limit:
            raise RowTooLarge(size, self.limit, complete=complete)
