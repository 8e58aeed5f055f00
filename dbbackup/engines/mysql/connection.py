"""Sessions with a MySQL or MariaDB server (PyMySQL), their limits and their errors.

Every session reads raw bytes (``character_set_results = NULL``, no type
conversion), so nothing is decoded or re-encoded between the server and a
backup object. Every socket has connect, read and write timeouts, and every
session gets server-side limits (lock waits, network waits), so no path waits
forever. The password goes to PyMySQL as an argument, never to a command line.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymysql
import pymysql.converters
import pymysql.cursors
from pymysql.connections import Connection

from dbbackup.errors import (
    ConfigError,
    DataError,
    DbBackupError,
    InputMissingError,
    InternalError,
    IOFailure,
    PermissionDeniedError,
    ServiceUnavailableError,
    TemporaryFailure,
)

DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
DEFAULT_PORT = 3306
PROGRAM_NAME = "dbbackup"
# Largest packet PyMySQL accepts from us or the server; the server's own
# max_allowed_packet still applies to what it receives.
CLIENT_MAX_PACKET = 1 << 30
SSL_UNSUPPORTED = 2026  # PyMySQL: "SSL is required but the server doesn't support it"
# Idle snapshot sessions must outlive the longest dump (a week).
LONG_WAIT_TIMEOUT = 7 * 86400

# Only the encoders: every value read comes back as the bytes the server sent.
RAW_CONVERSIONS: dict[Any, Any] = {
    key: value for key, value in pymysql.converters.conversions.items() if not isinstance(key, int)
}

CREDENTIAL_HINT = (
    "give the password through DBBACKUP_CONNECTION_PASSWORD, connection.password_file, "
    "a systemd credential named 'db-password' or ~/.my.cnf (see dbbackup(8), PASSWORDS)"
)

if TYPE_CHECKING:
    MyConnection = Connection[Any]
else:  # PyMySQL's Connection is generic only in its type stubs
    MyConnection = Connection


@dataclass(frozen=True)
class MyEndpoint:
    """Where and how to connect; durations in seconds (0 = no limit)."""

    host: str
    port: int
    unix_socket: str | None
    user: str
    sslmode: str
    connect_timeout: float
    io_timeout: float  # silence after which a stream is taken for dead; 0 = never
    lock_timeout: float
    statement_timeout: float
    password: str | None = None
    option_file: Path | None = None

    @property
    def display(self) -> str:
        return self.unix_socket or f"{self.host}:{self.port}"


def endpoint_from_settings(connection: Any, *, password: str | None, home: Path | None) -> MyEndpoint:
    """The endpoint for ``[connection]``; ``~/.my.cnf`` supplies what the settings leave out."""
    host = str(connection.host or "")
    unix_socket: str | None = None
    if host in ("", "localhost"):
        # As with the mysql clients, "localhost" means the local socket.
        unix_socket = DEFAULT_SOCKET
    elif host.startswith("/"):
        unix_socket = str(Path(host) / "mysqld.sock") if Path(host).is_dir() else host
    option_file = None
    if home is not None and (home / ".my.cnf").is_file():
        option_file = home / ".my.cnf"
    stall = float(getattr(connection, "stall_timeout", connection.idle_timeout))
    return MyEndpoint(
        host=host or "localhost",
        port=int(connection.port or DEFAULT_PORT),
        unix_socket=unix_socket,
        user=str(connection.user or ""),
        sslmode=str(connection.sslmode),
        connect_timeout=max(1.0, float(connection.connect_timeout)),
        io_timeout=max(0.0, stall),
        lock_timeout=float(connection.lock_timeout),
        statement_timeout=float(connection.statement_timeout),
        password=password,
        option_file=option_file,
    )


def _ssl_context(sslmode: str) -> ssl.SSLContext | None:
    """TLS settings for a first attempt; ``prefer`` falls back to plain text (see ``connect``)."""
    if sslmode in ("disable", "allow"):
        # PyMySQL cannot switch to TLS when a server demands it, so "allow" means plain text.
        return None
    context = ssl.create_default_context()
    if sslmode in ("prefer", "require"):
        # Encryption without proof of identity, as libpq does for these modes.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif sslmode == "verify-ca":
        context.check_hostname = False
    return context


def describe_error(exc: BaseException, context: str, endpoint: MyEndpoint | None = None) -> DbBackupError:
    """The exit-code class and message a PyMySQL error deserves."""
    code = error_code(exc)
    text = error_text(exc)
    where = f"{context}: " if context else ""
    if code in (1045, 1698):
        who = endpoint.user if endpoint and endpoint.user else "the default user"
        return PermissionDeniedError(f"{where}cannot log in as {who}: {text}", hint=CREDENTIAL_HINT)
    if code in (1044, 1142, 1143, 1227, 1370, 1410, 1211):
        return PermissionDeniedError(
            f"{where}{text}",
            hint="grant the account SELECT, SHOW VIEW, TRIGGER, EVENT, RELOAD, LOCK TABLES and "
            "(MariaDB) BINLOG MONITOR / (MySQL) REPLICATION CLIENT for backups",
        )
    if code == 1049:
        return InputMissingError(f"{where}{text}", hint="check the database name ('dbbackup list')")
    if code in (1148, 3948, 4166, 2068):
        return ConfigError(
            f"{where}the server refuses LOAD DATA LOCAL INFILE: {text}",
            hint="enable it on the server: SET GLOBAL local_infile = ON (MySQL 8 ships with it off)",
        )
    if code in (1153, 1301):
        return DataError(
            f"{where}a value is larger than the server's max_allowed_packet: {text}",
            hint="raise it on the server (SET GLOBAL max_allowed_packet = 1073741824) and retry",
        )
    if code == 1118:
        return DataError(
            f"{where}{text}", hint="raise innodb_log_file_size (MySQL 8.0.30+: innodb_redo_log_capacity)"
        )
    if code in (1205, 1213):
        return TemporaryFailure(
            f"{where}{text}", hint="another session holds a conflicting lock; retry later"
        )
    if code in (1969, 3024):
        return ServiceUnavailableError(
            f"{where}{text}", hint="raise connection.statement_timeout or set it to 0"
        )
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError) or code in (
        1040,
        1053,
        1317,
        1927,
        2002,
        2003,
        2006,
        2013,
    ):
        where_server = f" ({endpoint.display})" if endpoint else ""
        return ServiceUnavailableError(
            f"{where}the server{where_server} stopped answering or refused the connection: {text}",
            hint="check that the server runs and connection.host/port are right; the connect "
            "timeout and the silence allowed (connection.stall_timeout) are "
            + (f"{endpoint.connect_timeout:g} s and {endpoint.io_timeout:g} s" if endpoint else "set"),
        )
    if isinstance(exc, pymysql.err.DataError):
        return DataError(f"{where}{text}")
    return IOFailure(f"{where}{text}")


def error_code(exc: BaseException) -> int:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return int(args[0])
    return 0


def error_text(exc: BaseException) -> str:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) >= 2:
        return f"({args[0]}) {args[1]}"
    return str(exc) or exc.__class__.__name__


def connect(
    endpoint: MyEndpoint,
    database: str | None = None,
    *,
    autocommit: bool = True,
    local_infile: bool = False,
    context: str = "connecting",
) -> MyConnection:
    kwargs: dict[str, Any] = {
        "user": endpoint.user or None,
        "database": database,
        "charset": "utf8mb4",
        "use_unicode": False,
        "conv": RAW_CONVERSIONS,
        "connect_timeout": endpoint.connect_timeout,
        # The handshake and session setup get the connect timeout; see _stream_timeouts.
        "read_timeout": endpoint.connect_timeout,
        "write_timeout": endpoint.connect_timeout,
        "autocommit": autocommit,
        "local_infile": local_infile,
        "max_allowed_packet": CLIENT_MAX_PACKET,
        "program_name": PROGRAM_NAME,
        "ssl": _ssl_context(endpoint.sslmode),
    }
    if endpoint.unix_socket:
        kwargs["unix_socket"] = endpoint.unix_socket
    else:
        kwargs["host"] = endpoint.host
        kwargs["port"] = endpoint.port
    if endpoint.password is not None:
        kwargs["password"] = endpoint.password
    elif endpoint.option_file is not None:
        kwargs["read_default_file"] = str(endpoint.option_file)
    try:
        try:
            conn: MyConnection = pymysql.connect(**kwargs)
        except pymysql.err.OperationalError as exc:
            if endpoint.sslmode != "prefer" or error_code(exc) != SSL_UNSUPPORTED:
                raise
            kwargs["ssl"] = None
            conn = pymysql.connect(**kwargs)
    except pymysql.err.Error as exc:
        raise describe_error(exc, f"{context} to {endpoint.display}", endpoint) from exc
    try:
        _apply_session_limits(conn, endpoint)
        _stream_timeouts(conn, endpoint.io_timeout or None)
    except pymysql.err.Error as exc:
        conn.close()
        raise describe_error(exc, context, endpoint) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _stream_timeouts(conn: MyConnection, seconds: float | None) -> None:
    """From now on, silence is allowed for ``seconds`` (None: forever) per socket operation.

    PyMySQL has no public setter, but reads these two attributes before every
    socket read and write (1.0 to 1.2 alike), and has applied only the connect
    timeout so far, so a frozen server cannot hold the handshake for longer.
    """
    for name in ("_read_timeout", "_write_timeout"):
        if not hasattr(conn, name):
            raise InternalError(f"PyMySQL {pymysql.__version__} lacks {name}; cannot bound waits")
        setattr(conn, name, seconds)


def _apply_session_limits(conn: MyConnection, endpoint: MyEndpoint) -> None:
    io_wait = max(1, int(endpoint.io_timeout)) if endpoint.io_timeout else 31536000
    # 0 means "no limit" in the settings; the servers' own largest values stand for it.
    lock_wait = max(1, min(31536000, int(endpoint.lock_timeout or 31536000)))
    row_lock_wait = max(1, min(1073741824, int(endpoint.lock_timeout or 1073741824)))
    with conn.cursor() as cur:
        cur.execute(
            "SET character_set_results = NULL, time_zone = '+00:00', "
            f"lock_wait_timeout = {lock_wait}, innodb_lock_wait_timeout = {row_lock_wait}, "
            f"net_read_timeout = {io_wait}, net_write_timeout = {io_wait}, "
            f"wait_timeout = {LONG_WAIT_TIMEOUT}"
        )
        if endpoint.sslmode in ("require", "verify-ca", "verify-full"):
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = cur.fetchone()
            if not row or not row[1]:
                raise PermissionDeniedError(
                    f"{endpoint.display} does not offer TLS, and connection.sslmode is {endpoint.sslmode}",
                    hint="enable TLS on the server or lower connection.sslmode",
                )


@dataclass(frozen=True)
class Flavor:
    """MariaDB or MySQL, and which version."""

    name: str  # "mariadb" | "mysql"
    version: str
    version_num: int

    @property
    def mariadb(self) -> bool:
        return self.name == "mariadb"


_VERSION_RE = re.compile(rb"^(\d+)\.(\d+)\.(\d+)")


def parse_flavor(version: bytes, comment: bytes) -> Flavor:
    match = _VERSION_RE.match(version)
    number = 0
    if match:
        major, minor, patch = (int(part) for part in match.groups())
        number = major * 10000 + minor * 100 + patch
    is_maria = b"mariadb" in version.lower() or b"mariadb" in comment.lower()
    return Flavor("mariadb" if is_maria else "mysql", text(version), number)


def server_flavor(conn: MyConnection) -> Flavor:
    row = query_one(conn, "SELECT @@version, @@version_comment")
    return parse_flavor(row[0] or b"", row[1] or b"")


def text(value: Any) -> str:
    """A value the server sent as bytes (identifiers, settings), as text."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def query(conn: MyConnection, statement: str | bytes, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(statement, args)
        return list(cur.fetchall())


def query_one(conn: MyConnection, statement: str | bytes, args: Any = None) -> tuple[Any, ...]:
    rows = query(conn, statement, args)
    if not rows:
        raise IOFailure(f"the server returned no row for: {text(statement)[:80]}")
    return rows[0]


def execute(conn: MyConnection, statement: str | bytes, args: Any = None) -> None:
    with conn.cursor() as cur:
        cur.execute(statement, args)


def quote_ident(name: str) -> str:
    """An identifier in backticks, embedded backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


_SAFE_LITERAL = re.compile(rb"^[A-Za-z0-9_ ,.:+/-]*$")


def quote_string(value: str | bytes) -> str:
    """A string literal that means the same under any sql_mode (NO_BACKSLASH_ESCAPES or not)."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if _SAFE_LITERAL.match(raw):
        return "'" + raw.decode("ascii") + "'"
    return "X'" + raw.hex() + "'"


@contextlib.contextmanager
def closing(conn: MyConnection) -> Iterator[MyConnection]:
    try:
        yield conn
    finally:
        with contextlib.suppress(pymysql.err.Error, OSError):
            conn.close()
