"""Fingerprints that prove a restore reproduced a database.

Each function returns plain dicts/lists, so ``assert before == after`` makes
pytest print a readable diff of exactly what differs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from psycopg import sql

from .mariadb import MariaDBServer, quote_ident
from .postgres import PostgresServer

PgConnection = psycopg.Connection[tuple[Any, ...]]

_PG_USER_SCHEMAS = """
    n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
"""

# Commutative sums of per-row md5s: the result ignores physical row order, as
# ORDER BY would, but needs neither a sort nor one huge string -- string_agg
# over a big table hits PostgreSQL's 1 GB limit for a single value. Two 64-bit
# halves of each md5, summed as numeric (no overflow), keep 128 bits per row.
_PG_TABLE_HASH = """
    SELECT count(*),
           md5(count(*) || ':' || coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)
               || ':' || coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0))
    FROM (SELECT md5(ROW(fingerprinted_row.*)::text) AS h FROM {} AS fingerprinted_row) AS rows
"""


def _pg_strings(conn: PgConnection, query: str) -> list[str]:
    """Rows of a one-column query as a sorted list."""
    return sorted(str(row[0]) for row in conn.execute(query).fetchall())


def _pg_tables(conn: PgConnection) -> dict[str, dict[str, Any]]:
    relations = conn.execute(
        f"""SELECT n.nspname, c.relname,
                   (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''),
                           ', ' ORDER BY a.attnum)
                      FROM pg_attribute a
                      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'm') AND c.relispopulated AND {_PG_USER_SCHEMAS}"""
    ).fetchall()
    tables: dict[str, dict[str, Any]] = {}
    for schema, name, columns in relations:
        query = sql.SQL(_PG_TABLE_HASH).format(sql.Identifier(schema, name))
        count, digest = conn.execute(query).fetchall()[0]
        tables[f"{schema}.{name}"] = {"rows": count, "hash": digest, "columns": columns}
    return tables


def pg_fingerprint(server: PostgresServer, dbname: str) -> dict[str, Any]:
    """Contents and schema objects of every non-system schema of ``dbname``."""
    strings = {
        "schemas": "SELECT n.nspname FROM pg_namespace n WHERE " + _PG_USER_SCHEMAS,
        "views": f"""SELECT n.nspname || '.' || c.relname || ' ' || md5(pg_get_viewdef(c.oid))
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind IN ('v', 'm') AND {_PG_USER_SCHEMAS}""",
        "functions": f"""
            SELECT n.nspname || '.' || p.proname
                   || '(' || pg_get_function_identity_arguments(p.oid) || ') ' || p.prokind::text || ' '
                   || CASE WHEN p.prokind = 'a' THEN 'aggregate'
                           ELSE md5(pg_get_functiondef(p.oid)) END
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE {_PG_USER_SCHEMAS}""",
        "sequences": """SELECT schemaname || '.' || sequencename || ' last_value='
                               || coalesce(last_value::text, 'unused')
                          FROM pg_sequences""",
        "indexes": f"""SELECT n.nspname || '.' || c.relname || ' ' || pg_get_indexdef(c.oid)
                         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE c.relkind IN ('i', 'I') AND {_PG_USER_SCHEMAS}""",
        "constraints": f"""
            SELECT n.nspname || '.' || coalesce(rel.relname, typ.typname) || '.' || con.conname
                   || ' ' || pg_get_constraintdef(con.oid)
              FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
              LEFT JOIN pg_class rel ON rel.oid = con.conrelid
              LEFT JOIN pg_type typ ON typ.oid = con.contypid
             WHERE {_PG_USER_SCHEMAS}""",
        "triggers": """SELECT tgrelid::regclass::text || '.' || tgname || ' '
                              || md5(pg_get_triggerdef(oid))
                         FROM pg_trigger WHERE NOT tgisinternal""",
        "extensions": "SELECT extname || ' ' || extversion FROM pg_extension",
    }
    with server.connect(dbname) as conn:
        result: dict[str, Any] = {key: _pg_strings(conn, query) for key, query in strings.items()}
        result["tables"] = _pg_tables(conn)
    return result


def pg_roles(server: PostgresServer) -> dict[str, dict[str, Any]]:
    """Every role except the built-in ``pg_*`` ones and the bootstrap superuser.

    The bootstrap superuser differs between harness servers (random password);
    its attributes are the same everywhere.
    """
    rows = server.query(
        """SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb,
                  r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit,
                  r.rolvaliduntil::text, md5(r.rolpassword),
                  ARRAY(SELECT g.rolname || CASE WHEN m.admin_option THEN ' with admin' ELSE '' END
                          FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                         WHERE m.member = r.oid ORDER BY 1),
                  ARRAY(SELECT coalesce(d.datname, '*') || ': ' || array_to_string(s.setconfig, ', ')
                          FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase
                         WHERE s.setrole = r.oid ORDER BY 1)
             FROM pg_authid r
            WHERE r.rolname NOT LIKE 'pg\\_%' AND r.oid <> 10"""
    )
    keys = (
        "superuser",
        "inherit",
        "createrole",
        "createdb",
        "login",
        "replication",
        "bypassrls",
        "connlimit",
        "valid_until",
        "password_md5",
        "member_of",
        "settings",
    )
    return {row[0]: dict(zip(keys, row[1:], strict=True)) for row in rows}


def _maria_strings(server: MariaDBServer, query: str, db: str) -> list[str]:
    return sorted(str(row[0]) for row in server.query(query, params=(db,)))


def mariadb_fingerprint(server: MariaDBServer, db: str) -> dict[str, Any]:
    """Row counts, CHECKSUM TABLE and stored programs of database ``db``.

    ``create`` is an md5 of SHOW CREATE TABLE, so a lost column type, index or
    AUTO_INCREMENT counter shows up too.
    """
    names = server.query(
        "SELECT TABLE_NAME FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'",
        params=(db,),
    )
    tables: dict[str, dict[str, Any]] = {}
    with server.connect(db) as conn, conn.cursor() as cur:
        for (name,) in names:
            table = f"{quote_ident(db)}.{quote_ident(name)}"
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            count = cur.fetchall()[0][0]
            cur.execute(f"CHECKSUM TABLE {table} EXTENDED")
            checksum = cur.fetchall()[0][1]
            cur.execute(f"SHOW CREATE TABLE {table}")
            create = hashlib.md5(str(cur.fetchall()[0][1]).encode()).hexdigest()
            tables[name] = {"rows": count, "checksum": checksum, "create": create}
    schema = "information_schema"
    return {
        "tables": tables,
        "routines": _maria_strings(
            server,
            f"SELECT CONCAT(ROUTINE_TYPE, ' ', ROUTINE_NAME, ' ', DEFINER, ' ',"
            f" MD5(COALESCE(ROUTINE_DEFINITION, ''))) FROM {schema}.ROUTINES"
            " WHERE ROUTINE_SCHEMA = %s",
            db,
        ),
        "triggers": _maria_strings(
            server,
            f"SELECT CONCAT(TRIGGER_NAME, ' ', ACTION_TIMING, ' ', EVENT_MANIPULATION, ' ',"
            f" EVENT_OBJECT_TABLE, ' ', MD5(ACTION_STATEMENT)) FROM {schema}.TRIGGERS"
            " WHERE TRIGGER_SCHEMA = %s",
            db,
        ),
        "events": _maria_strings(
            server,
            f"SELECT CONCAT_WS(' ', EVENT_NAME, STATUS, EVENT_TYPE, INTERVAL_VALUE,"
            f" INTERVAL_FIELD, MD5(EVENT_DEFINITION)) FROM {schema}.EVENTS"
            " WHERE EVENT_SCHEMA = %s",
            db,
        ),
        "views": _maria_strings(
            server,
            f"SELECT CONCAT(TABLE_NAME, ' ', MD5(VIEW_DEFINITION)) FROM {schema}.VIEWS"
            " WHERE TABLE_SCHEMA = %s",
            db,
        ),
    }


# Accounts the installer and the harness create; a restore must not touch them.
MARIADB_SYSTEM_ACCOUNTS = frozenset(
    {
        ("root", "localhost"),
        ("root", "127.0.0.1"),
        ("mariadb.sys", "localhost"),
        ("mysql", "localhost"),
        ("PUBLIC", ""),
    }
)


def mariadb_grants(server: MariaDBServer) -> dict[str, list[str]]:
    """SHOW GRANTS of every non-system account and role, keyed ``user@host``."""
    accounts = server.query("SELECT User, Host, is_role FROM mysql.user")
    grants: dict[str, list[str]] = {}
    with server.connect() as conn, conn.cursor() as cur:
        for user, host, is_role in accounts:
            if (user, host) in MARIADB_SYSTEM_ACCOUNTS:
                continue
            if is_role == "Y":
                cur.execute(f"SHOW GRANTS FOR {quote_ident(user)}")
            else:
                cur.execute("SHOW GRANTS FOR %s@%s", (user, host))
            grants[f"{user}@{host}"] = sorted(str(row[0]) for row in cur.fetchall())
    return grants
