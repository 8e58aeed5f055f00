"""Connections to PostgreSQL: our own sessions (psycopg) and the client tools' environment.

Every session gets connect, statement, lock and idle-in-transaction
timeouts, so no path waits forever; children get the same through the
environment and never a password on their command line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dbbackup import credentials
from dbbackup.errors import (
    DbBackupError,
    InputMissingError,
    IOFailure,
    PermissionDeniedError,
    ServiceUnavailableError,
)

APPLICATION_NAME = "dbbackup"
DEFAULT_SOCKET_DIR = "/run/postgresql"


@dataclass(frozen=True)
class PgEndpoint:
    """Where and how to connect; durations in seconds (0 = no limit)."""

    host: str
    port: int
    user: str
    maintenance_db: str
    sslmode: str
    connect_timeout: float
    statement_timeout: float
    lock_timeout: float
    idle_timeout: float
    stall_timeout: float = 600.0
    password: str | None = None
    passfile: Path | None = None

    @property
    def display(self) -> str:
        return f"{self.host}:{self.port}"


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


def describe_connect_error(endpoint: PgEndpoint, dbname: str, exc: Exception) -> DbBackupError:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else exc.__class__.__name__
    where = f"PostgreSQL at {endpoint.display} (database {dbname!r})"
    if credentials.is_missing_password(text):
        return PermissionDeniedError(
            f"cannot log in to {where} as {endpoint.user or os.environ.get('USER', '?')}: {first}",
            hint=credentials.CREDENTIAL_SOURCES_HINT,
        )
    kind = credentials.classify_client_error(text)
    if kind is InputMissingError:
        return InputMissingError(f"{where}: {first}", hint="check the database name ('dbbackup list')")
    if kind is PermissionDeniedError:
        return PermissionDeniedError(f"{where}: {first}")
    return ServiceUnavailableError(
        f"cannot reach {where}: {first}",
        hint="check that the server runs and connection.host/port are right; "
        f"the connect timeout is {endpoint.connect_timeout:g} s",
    )


def connect(endpoint: PgEndpoint, dbname: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    kwargs: dict[str, Any] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "dbname": dbname,
        "sslmode": endpoint.sslmode,
        "connect_timeout": max(1, int(endpoint.connect_timeout)),
        "application_name": APPLICATION_NAME,
        "autocommit": autocommit,
        # A peer that vanished (host down, network cut) is noticed within about a minute.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 60_000,
    }
    if endpoint.user:
        kwargs["user"] = endpoint.user
    if endpoint.password:
        kwargs["password"] = endpoint.password
    try:
        conn = psycopg.connect(**kwargs)
    except psycopg.Error as exc:
        raise describe_connect_error(endpoint, dbname, exc) from exc
    try:
        apply_session_limits(conn, endpoint)
    except psycopg.Error as exc:
        conn.close()
        raise describe_connect_error(endpoint, dbname, exc) from exc
    return conn


def apply_session_limits(conn: psycopg.Connection[Any], endpoint: PgEndpoint) -> None:
    # Sent as SET, not as a startup "options" packet, so that poolers accept them too.
    with conn.transaction() if not conn.autocommit else contextlib.nullcontext():
        for name, value in (
            ("statement_timeout", endpoint.statement_timeout),
            ("lock_timeout", endpoint.lock_timeout),
            ("idle_in_transaction_session_timeout", endpoint.idle_timeout),
        ):
            conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(_ms(value))))


def child_env(endpoint: PgEndpoint, dbname: str) -> dict[str, str]:
    """Environment for pg_dump/pg_restore/psql: connection by env, password by passfile."""
    env = {
        "PGHOST": endpoint.host,
        "PGPORT": str(endpoint.port),
        "PGDATABASE": dbname,
        "PGSSLMODE": endpoint.sslmode,
        "PGCONNECT_TIMEOUT": str(max(2, int(endpoint.connect_timeout))),
        "PGAPPNAME": APPLICATION_NAME,
        "PGOPTIONS": (
            f"-c lock_timeout={_ms(endpoint.lock_timeout)} "
            f"-c idle_in_transaction_session_timeout={_ms(endpoint.idle_timeout)}"
        ),
    }
    if endpoint.user:
        env["PGUSER"] = endpoint.user
    if endpoint.passfile is not None:
        env["PGPASSFILE"] = str(endpoint.passfile)
    return env


_VERSION_RE = re.compile(r"(\d+)(?:\.(\d+))?")


def tool_major(path: str) -> int:
    from dbbackup import execute

    out = execute.run(
        [path, "--version"],
        env=execute.child_environment(),
        timeout=15,
        context="checking client version",
    )
    # "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": the first number after the name.
    match = _VERSION_RE.search(out.decode("utf-8", "replace").partition(")")[2])
    if not match:
        raise ServiceUnavailableError(f"cannot tell the version of {path}")
    return int(match.group(1))


def find_client_bindir(server_major: int, root: Path = Path("/usr/lib/postgresql")) -> Path:
    """Client tools matching the server's major version, or newer; never older.

    Debian installs each major version's tools in ``/usr/lib/postgresql/N/bin``.
    """
    candidates: list[tuple[int, Path]] = []
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.isdigit() and (entry / "bin" / "pg_dump").exists():
                candidates.append((int(entry.name), entry / "bin"))
    exact = [path for major, path in candidates if major == server_major]
    if exact:
        return exact[0]
    newer = sorted((major, path) for major, path in candidates if major > server_major)
    if newer:
        return newer[0][1]
    on_path = shutil.which("pg_dump")
    if on_path:
        major = tool_major(on_path)
        if major >= server_major:
            return Path(on_path).parent
        raise ServiceUnavailableError(
            f"pg_dump {major} ({on_path}) is older than the server (PostgreSQL {server_major}); "
            "an older pg_dump cannot dump a newer server",
            hint=f"install postgresql-client-{server_major}",
        )
    if candidates:
        newest = max(candidates)[0]
        raise ServiceUnavailableError(
            f"only pg_dump {newest} is installed, older than the server (PostgreSQL {server_major})",
            hint=f"install postgresql-client-{server_major}",
        )
    raise ServiceUnavailableError(
        "pg_dump is not installed", hint=f"install postgresql-client-{server_major}"
    )


@contextlib.contextmanager
def cursor(
    conn: psycopg.Connection[Any],
) -> Iterator[psycopg.Cursor[Any]]:
    with conn.cursor() as cur:
        yield cur


def _is_socket_dir(host: str) -> bool:
    return host.startswith("/") or host.startswith("@")


def detect_pooler(endpoint: PgEndpoint, conn: psycopg.Connection[Any]) -> str | None:
    """Name the pooler between us and the server, if any (PgBouncer, pgpool-II).

    A proxy shows because the server reports another port than the one we
    dialled (or a TCP port while we came in over a socket). Only then is
    PgBouncer's admin database asked for its version, so that a plain server
    never logs a failed login; a plain TCP proxy (port mapping, tunnel) is
    recognised by PostgreSQL itself answering that request, and is fine.
    """
    try:
        with conn.transaction():
            row = conn.execute("SHOW pool_version").fetchone()
        return f"pgpool-II {row[0]}" if row else "pgpool-II"
    except psycopg.Error:
        pass  # a real PostgreSQL server has no such parameter: not pgpool
    row = conn.execute("SELECT pg_catalog.inet_server_port()").fetchone()
    server_port = row[0] if row else None
    if _is_socket_dir(endpoint.host):
        proxied = server_port is not None
    else:
        proxied = server_port is not None and int(server_port) != endpoint.port
    if not proxied:
        return None
    try:
        admin = psycopg.connect(
            host=endpoint.host,
            port=endpoint.port,
            dbname="pgbouncer",
            user=endpoint.user or None,
            password=endpoint.password,
            connect_timeout=max(1, min(5, int(endpoint.connect_timeout))),
            autocommit=True,
        )
    except psycopg.Error as exc:
        text = str(exc).lower()
        # PostgreSQL itself answered (through a plain TCP proxy or port mapping): no pooler.
        if 'database "pgbouncer"' in text or "pg_hba.conf" in text:
            return None
        if "not allowed" in text or "no such database" in text or "pgbouncer" in text:
            return "PgBouncer"
        return None
    try:
        version = admin.execute("SHOW VERSION").fetchone()
        return str(version[0]) if version else "PgBouncer"
    except psycopg.Error:
        return "PgBouncer"
    finally:
        admin.close()


def pooler_error(endpoint: PgEndpoint, pooler: str) -> DbBackupError:
    return ServiceUnavailableError(
        f"{endpoint.display} is {pooler}, not a PostgreSQL server: a transaction-mode pooler cannot "
        "hold a dump's snapshot or a restore's session, so dbbackup will not back up or restore through it",
        hint="set connection.direct_host (and direct_port) to the PostgreSQL server behind the pooler, "
        "or to a session-mode pool; dbbackup then uses that address for dumps and restores",
    )


def direct_endpoint(endpoint: PgEndpoint, direct_host: str, direct_port: int) -> PgEndpoint:
    from dataclasses import replace

    return replace(endpoint, host=direct_host or endpoint.host, port=direct_port or endpoint.port)


@contextlib.contextmanager
def translated_errors(context: str) -> Iterator[None]:
    """Server errors become errors with exit codes (69 for lost connections, 74 otherwise)."""
    try:
        yield
    except psycopg.Error as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else exc.__class__.__name__
        if isinstance(exc, psycopg.OperationalError):
            raise ServiceUnavailableError(f"{context}: {first}") from exc
        kind = credentials.classify_client_error(text)
        if kind is PermissionDeniedError:
            raise PermissionDeniedError(f"{context}: {first}") from exc
        raise IOFailure(f"{context}: {first}") from exc


def cut_connection(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket so a read blocked on a silent peer fails at once."""
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def stall_error(where: str, timeout: float) -> DbBackupError:
    return ServiceUnavailableError(
        f"{where}: no data moved for {timeout:g} s; the server, pooler or network stopped answering",
        hint="check the server and the network; raise connection.stall_timeout if this table "
        "legitimately pauses that long",
    )
