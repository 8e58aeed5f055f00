"""SQL scripts that both dbbackup and the mariadb/mysql client can run.

A script is a few ``--`` comment lines, one ``DELIMITER`` line, then the
statements, each followed by the delimiter and a newline. The delimiter is
chosen so that it occurs in no statement, which makes splitting exact: no SQL
parsing is needed to restore, and ``mariadb --binary-mode DB < script`` gives
the same result by hand.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from dbbackup.errors import DataError

DELIMITER_KEYWORD = b"DELIMITER "
CANDIDATES = (b";;", b"$$", b"//")


def choose_delimiter(statements: Sequence[bytes]) -> bytes:
    for candidate in CANDIDATES:
        if not any(candidate in statement for statement in statements):
            return candidate
    while True:
        candidate = b";;" + secrets.token_hex(8).encode() + b";;"
        if not any(candidate in statement for statement in statements):
            return candidate


def build(statements: Sequence[bytes], comments: Sequence[str] = ()) -> bytes:
    """A script of ``statements`` (without terminators) that :func:`parse` splits back."""
    cleaned = [statement.strip() for statement in statements if statement.strip()]
    delimiter = choose_delimiter(cleaned)
    out = bytearray()
    for comment in comments:
        out += b"-- " + " ".join(comment.splitlines()).encode("utf-8", "surrogateescape") + b"\n"
    out += DELIMITER_KEYWORD + delimiter + b"\n"
    for statement in cleaned:
        out += statement + delimiter + b"\n"
    return bytes(out)


def parse(script: bytes, *, name: str = "script") -> list[bytes]:
    """The statements of a script made by :func:`build`; a cut-off script is a DataError."""
    if not script.strip():
        return []
    position = 0
    while script.startswith(b"-- ", position) or script.startswith(b"\n", position):
        end = script.find(b"\n", position)
        if end < 0:
            return []
        position = end + 1
    if not script.startswith(DELIMITER_KEYWORD, position):
        raise DataError(f"{name}: not a dbbackup SQL script (no DELIMITER line)")
    end = script.find(b"\n", position)
    if end < 0:
        raise DataError(f"{name}: the script ends inside its DELIMITER line")
    delimiter = script[position + len(DELIMITER_KEYWORD) : end].strip()
    if not delimiter:
        raise DataError(f"{name}: empty delimiter")
    body = script[end + 1 :]
    if not body:
        return []
    terminator = delimiter + b"\n"
    if not body.endswith(terminator):
        raise DataError(
            f"{name}: the last statement is not terminated; the script was cut short",
            hint="the backup set is damaged; restore from another set",
        )
    return [statement for statement in body[: -len(terminator)].split(terminator) if statement.strip()]
