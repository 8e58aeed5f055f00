"""Users, roles and their grants: the server-wide part of a whole-server backup.

The script creates what is missing and sets what exists to the backed-up
state: ``CREATE ROLE IF NOT EXISTS``, then for each user ``CREATE USER IF NOT
EXISTS`` and ``ALTER USER`` with the same clauses (password hash, plugin, TLS
and resource options), then every grant (roles' first, so role grants to
users find their roles), with ``SET DEFAULT ROLE`` where SHOW GRANTS lists it.

Left out: the accounts the server's installer creates (they differ between
servers and a restore must not change them) and the account dbbackup runs
as, so a restore cannot lock itself out.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbbackup.engines.mysql import script
from dbbackup.engines.mysql.connection import Flavor, MyConnection, query, query_one, quote_ident, text

SYSTEM_USERS = frozenset({"mariadb.sys", "mysql.sys", "mysql.session", "mysql.infoschema", "PUBLIC"})
SYSTEM_ACCOUNTS = frozenset({("root", "localhost"), ("mysql", "localhost")})


@dataclass(frozen=True)
class Account:
    user: str
    host: str
    is_role: bool

    @property
    def spec(self) -> str:
        if self.is_role:
            return quote_ident(self.user)
        return f"{quote_ident(self.user)}@{quote_ident(self.host)}"


def list_accounts(conn: MyConnection, flavor: Flavor) -> list[Account]:
    current = text(query_one(conn, "SELECT CURRENT_USER()")[0])
    if flavor.mariadb:
        rows = query(conn, "SELECT User, Host, is_role FROM mysql.user ORDER BY User, Host")
        found = [Account(text(u), text(h), text(r) == "Y") for u, h, r in rows]
    else:
        # MySQL 8 roles are accounts too; SHOW CREATE USER describes them fully.
        rows = query(conn, "SELECT User, Host FROM mysql.user ORDER BY User, Host")
        found = [Account(text(u), text(h), False) for u, h in rows]
    return [
        account
        for account in found
        if account.user not in SYSTEM_USERS
        and (account.user, account.host) not in SYSTEM_ACCOUNTS
        and f"{account.user}@{account.host}" != current
    ]


def _grants(conn: MyConnection, account: Account) -> list[bytes]:
    return [bytes(row[0]) for row in query(conn, f"SHOW GRANTS FOR {account.spec}")]


def _create_and_alter(definition: bytes) -> list[bytes]:
    if not definition.startswith(b"CREATE USER "):
        return [definition]
    clauses = definition[len(b"CREATE USER ") :]
    return [b"CREATE USER IF NOT EXISTS " + clauses, b"ALTER USER " + clauses]


def accounts_script(conn: MyConnection, flavor: Flavor, header: str) -> bytes:
    accounts = list_accounts(conn, flavor)
    if not flavor.mariadb:
        # Password hashes of caching_sha2_password are binary; as hex they survive any transport.
        query(conn, "SET SESSION print_identified_with_as_hex = ON")
    statements: list[bytes] = [b"SET NAMES utf8mb4"]
    roles = [a for a in accounts if a.is_role]
    users = [a for a in accounts if not a.is_role]
    for role in roles:
        statements.append(f"CREATE ROLE IF NOT EXISTS {role.spec}".encode())
    for user in users:
        definition = bytes(query_one(conn, f"SHOW CREATE USER {user.spec}")[0])
        statements += _create_and_alter(definition)
    for account in roles + users:
        statements += _grants(conn, account)
    # MariaDB lists a role's inherited grants under every role that holds it.
    unique = list(dict.fromkeys(statements))
    return script.build(unique, [header, "users, roles and grants"])
