"""Reading one database's objects and their definitions (SHOW CREATE ...).

pre-data holds what table data needs: sequences (MariaDB) and tables.
post-data holds the rest, in an order that never meets a missing object:
routines, views (first as stand-ins with the right column names, then their
real definitions, so views over views need no ordering), triggers, events.
Definitions are read with ``character_set_results = NULL`` and replayed under
the character set, collation and sql_mode they were created with, as
mysqldump does, so bodies in any character set come back byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dbbackup.engines.mysql import script
from dbbackup.engines.mysql.connection import (
    Flavor,
    MyConnection,
    query,
    query_one,
    quote_ident,
    quote_string,
    text,
)
from dbbackup.engines.mysql.tsv import Column
from dbbackup.errors import PermissionDeniedError

# Table engines that keep a consistent snapshot (MVCC); the others are read
# as they are when their turn comes.
TRANSACTIONAL_ENGINES = frozenset({"INNODB", "ROCKSDB", "TOKUDB"})
# Engines whose rows are not ours to dump: none stored, or stored elsewhere
# (mysqldump skips MERGE data the same way).
NO_DATA_ENGINES = frozenset({"BLACKHOLE", "FEDERATED", "SPIDER", "MRG_MYISAM"})
BASE_TABLE_TYPES = frozenset({"BASE TABLE", "SYSTEM VERSIONED"})
_STORED_COLUMN = re.compile(r"\b(VIRTUAL|STORED|PERSISTENT)\b")
ROUTINE_ORDER = {"FUNCTION": 0, "PROCEDURE": 1, "PACKAGE": 2, "PACKAGE BODY": 3}
LOCK_BATCH = 100

SESSION_PRELUDE = (
    b"SET NAMES utf8mb4",
    b"SET time_zone = '+00:00'",
    b"SET sql_mode = 'NO_AUTO_VALUE_ON_ZERO'",
    b"SET foreign_key_checks = 0",
)


@dataclass
class TableInfo:
    name: str
    table_type: str
    engine: str
    size: int
    columns: list[Column] = field(default_factory=list)

    @property
    def is_base_table(self) -> bool:
        return self.table_type in BASE_TABLE_TYPES

    @property
    def is_view(self) -> bool:
        return self.table_type == "VIEW"

    @property
    def is_sequence(self) -> bool:
        return self.table_type == "SEQUENCE"

    @property
    def transactional(self) -> bool:
        return self.engine.upper() in TRANSACTIONAL_ENGINES

    @property
    def has_data(self) -> bool:
        return self.is_base_table and self.engine.upper() not in NO_DATA_ENGINES


def list_objects(conn: MyConnection, database: str) -> list[TableInfo]:
    """Tables, views and sequences of ``database`` with their dumpable columns."""
    rows = query(
        conn,
        "SELECT TABLE_NAME, TABLE_TYPE, IFNULL(ENGINE, ''), IFNULL(DATA_LENGTH, 0) "
        "FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
        (database,),
    )
    tables = {
        text(name): TableInfo(text(name), text(kind), text(engine), int(size))
        for name, kind, engine, size in rows
    }
    columns = query(
        conn,
        "SELECT TABLE_NAME, COLUMN_NAME, LOWER(DATA_TYPE), UPPER(IFNULL(EXTRA, '')) "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION",
        (database,),
    )
    for table, name, data_type, extra in columns:
        info = tables.get(text(table))
        # Generated columns are computed again on restore; they cannot be loaded.
        if info is not None and not (info.is_base_table and _STORED_COLUMN.search(text(extra))):
            info.columns.append(Column(text(name), text(data_type)))
    return list(tables.values())


def lock_definitions(conn: MyConnection, database: str, tables: Iterable[TableInfo]) -> None:
    """Take shared metadata locks on ``tables`` for the rest of the transaction.

    Opening a table in the snapshot transaction holds its metadata lock until
    the transaction ends, so no ALTER or DROP can change a table between the
    snapshot and the moment its definition and rows are read.
    """
    names = [t.name for t in tables if t.is_base_table or t.is_sequence]
    for start in range(0, len(names), LOCK_BATCH):
        batch = names[start : start + LOCK_BATCH]
        query(
            conn,
            " UNION ALL ".join(
                f"SELECT 1 FROM {quote_ident(database)}.{quote_ident(name)} WHERE 0"  # noqa: S608
                for name in batch
            ),
        )


def database_properties(conn: MyConnection, database: str, flavor: Flavor) -> dict[str, str]:
    comment = "SCHEMA_COMMENT" if flavor.mariadb and flavor.version_num >= 100500 else "''"
    row = query_one(
        conn,
        f"SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME, {comment} "  # noqa: S608
        "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        (database,),
    )
    return {"charset": text(row[0]), "collation": text(row[1]), "comment": text(row[2])}


def _show_create(
    conn: MyConnection, kind: str, database: str, name: str, column: int
) -> tuple[bytes, tuple[Any, ...]]:
    row = query_one(conn, f"SHOW CREATE {kind} {quote_ident(database)}.{quote_ident(name)}")
    definition = row[column]
    if definition is None:
        raise PermissionDeniedError(
            f"{database}: the server hides the definition of {kind.lower()} {name} from this account",
            hint="grant the backup account SHOW CREATE ROUTINE (MariaDB) / SHOW_ROUTINE (MySQL), "
            "or SELECT on mysql.proc",
        )
    return bytes(definition), row


def _context(sql_mode: bytes | None, charset: bytes | None, collation: bytes | None) -> list[bytes]:
    """Statements that recreate the session an object was defined in."""
    out = []
    if sql_mode is not None:
        out.append(b"SET sql_mode = " + quote_string(bytes(sql_mode)).encode())
    if charset:
        out.append(b"SET character_set_client = " + quote_string(bytes(charset)).encode())
    if collation:
        out.append(b"SET collation_connection = " + quote_string(bytes(collation)).encode())
    return out


def pre_data(conn: MyConnection, database: str, objects: list[TableInfo], header: str) -> bytes:
    statements = list(SESSION_PRELUDE)
    for info in objects:
        if info.is_sequence:
            statements.append(_show_create(conn, "SEQUENCE", database, info.name, 1)[0])
    for info in objects:
        if info.is_base_table:
            statements.append(_show_create(conn, "TABLE", database, info.name, 1)[0])
    return script.build(statements, [header, "tables and sequences; table rows are separate objects"])


def _routines(conn: MyConnection, database: str) -> list[bytes]:
    rows = query(
        conn,
        "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s",
        (database,),
    )
    found = sorted(
        ((text(kind), text(name)) for name, kind in rows), key=lambda r: (ROUTINE_ORDER.get(r[0], 9), r[1])
    )
    out: list[bytes] = []
    for kind, name in found:
        definition, row = _show_create(conn, kind, database, name, 2)
        out += _context(row[1], row[3], row[4])
        out.append(definition)
    return out


def _views(conn: MyConnection, database: str, views: list[TableInfo]) -> list[bytes]:
    out: list[bytes] = [b"SET NAMES utf8mb4"]
    for view in views:
        columns = ", ".join(f"1 AS {quote_ident(c.name)}" for c in view.columns) or "1 AS `dbbackup`"
        out.append(f"CREATE OR REPLACE VIEW {quote_ident(view.name)} AS SELECT {columns}".encode())
    for view in views:
        definition, row = _show_create(conn, "VIEW", database, view.name, 1)
        out += _context(None, row[2], row[3])
        if definition.startswith(b"CREATE "):
            definition = b"CREATE OR REPLACE " + definition[len(b"CREATE ") :]
        out.append(definition)
    return out


def _triggers(conn: MyConnection, database: str) -> list[bytes]:
    rows = query(
        conn,
        "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s "
        "ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
        (database,),
    )
    out: list[bytes] = []
    for (name,) in rows:
        definition, row = _show_create(conn, "TRIGGER", database, text(name), 2)
        out += _context(row[1], row[3], row[4])
        out.append(definition)
    return out


def _events(conn: MyConnection, database: str) -> list[bytes]:
    rows = query(
        conn,
        "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s ORDER BY EVENT_NAME",
        (database,),
    )
    out: list[bytes] = []
    for (name,) in rows:
        definition, row = _show_create(conn, "EVENT", database, text(name), 3)
        out += _context(row[1], row[4], row[5])
        # Schedules are stored in the zone the event was created in.
        out.append(b"SET time_zone = " + quote_string(bytes(row[2])).encode())
        out.append(definition)
    return out


def post_data(conn: MyConnection, database: str, objects: list[TableInfo], header: str) -> bytes:
    views = [info for info in objects if info.is_view]
    statements = list(SESSION_PRELUDE)
    statements += _routines(conn, database)
    statements += _views(conn, database, views)
    statements += _triggers(conn, database)
    statements += _events(conn, database)
    statements += SESSION_PRELUDE[:3]
    return script.build(statements, [header, "routines, views, triggers and events"])


def sequence_values(conn: MyConnection, database: str, objects: list[TableInfo], header: str) -> bytes:
    """``SETVAL`` statements that put every sequence where the snapshot saw it."""
    statements = []
    for info in objects:
        if info.is_sequence:
            row = query_one(
                conn,
                f"SELECT next_not_cached_value FROM {quote_ident(database)}.{quote_ident(info.name)}",  # noqa: S608
            )
            value = int(row[0])
            statements.append(f"SELECT SETVAL({quote_ident(info.name)}, {value}, 0)".encode())
    if not statements:
        return b""
    return script.build(statements, [header, "sequence positions"])
