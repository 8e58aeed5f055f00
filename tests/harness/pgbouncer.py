"""PgBouncer in front of a harness PostgreSQL server."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from .net import LOOPBACK, free_port, port_accepts, wait_until
from .postgres import CONNECT_TIMEOUT, PostgresServer
from .process import (
    Account,
    HarnessError,
    ManagedServer,
    log_tail,
    make_private_dir,
    remove_private_dir,
    require_binary,
    server_account,
    server_env,
    spawn,
    stop_process,
    write_private_file,
)

PACKAGE = "pgbouncer"
STARTUP_TIMEOUT = 30


def _ini(server: PostgresServer, base: Path, port: int, pool_mode: str) -> str:
    # Timeouts are far below PgBouncer's defaults so that a test whose pool is
    # exhausted or whose server vanished fails within seconds, not minutes.
    return f"""\
[databases]
* = host={server.host} port={server.port}

[pgbouncer]
listen_addr = {LOOPBACK}
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {base / "userlist.txt"}
admin_users = {server.superuser}
stats_users = {server.superuser}
pool_mode = {pool_mode}
max_client_conn = 200
default_pool_size = 20
server_connect_timeout = 5
server_login_retry = 1
query_wait_timeout = 30
ignore_startup_parameters = extra_float_digits
logfile = {base / "pgbouncer.log"}
pidfile = {base / "pgbouncer.pid"}
"""


class PgBouncer(ManagedServer):
    """PgBouncer on a free 127.0.0.1 port, pooling connections to ``server``.

    Clients log in as the server's superuser with its password; the auth file
    holds the server's SCRAM verifier, so PgBouncer never sees the plain text.
    """

    label = "PgBouncer"

    host = LOOPBACK

    def __init__(self, server: PostgresServer, pool_mode: str = "transaction") -> None:
        self.server = server
        self.pool_mode = pool_mode
        self.port = 0
        self.base_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._account: Account | None = None

    @property
    def user(self) -> str:
        return self.server.superuser

    @property
    def password(self) -> str:
        return self.server.password

    @property
    def log_path(self) -> Path:
        return self._base() / "pgbouncer.log"

    def start(self) -> None:
        binary = require_binary("pgbouncer", PACKAGE)
        # PgBouncer refuses to run as root, like the server it fronts.
        account = server_account("postgres", PACKAGE)
        self._account = account
        self.base_dir = make_private_dir("dbbackup-pgbouncer-", account)
        verifier = self.server.query(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", params=(self.user,)
        )[0][0]
        write_private_file(self.base_dir / "userlist.txt", f'"{self.user}" "{verifier}"\n', account)
        self.port = free_port()
        ini = _ini(self.server, self.base_dir, self.port, self.pool_mode)
        ini_path = write_private_file(self.base_dir / "pgbouncer.ini", ini, account)
        with (self.base_dir / "stdout.log").open("ab") as out:
            self._proc = spawn(
                [binary, ini_path],
                account=account,
                env=server_env(self.base_dir),
                cwd=self.base_dir,
                log=out,
            )
        proc = self._proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise HarnessError(
                    f"pgbouncer exited {proc.returncode}:\n{log_tail(self.log_path)}"
                    f"{log_tail(self._base() / 'stdout.log')}"
                )
            return port_accepts(self.host, self.port)

        try:
            wait_until(listening, timeout=STARTUP_TIMEOUT, what="pgbouncer to listen")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM (immediate shutdown), then remove the directory; safe to call twice."""
        try:
            if self._proc is not None:
                stop_process(self._proc, signal.SIGTERM, timeout=10)
                self._proc = None
        finally:
            if self.base_dir is not None:
                remove_private_dir(self.base_dir)
                self.base_dir = None

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq conninfo through the pooler, without the password (see env())."""
        return make_conninfo(host=self.host, port=self.port, user=self.user, dbname=dbname)

    def env(self) -> dict[str, str]:
        """libpq variables that make a child connect through the pooler."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
        }

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """Autocommit connection through the pooler; no server-side prepared statements,
        which transaction pooling cannot keep for a client."""
        conninfo = make_conninfo(self.dsn(dbname), password=self.password, connect_timeout=CONNECT_TIMEOUT)
        return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)

    def admin_query(self, command: str) -> list[tuple[Any, ...]]:
        """Run an admin console command such as ``SHOW POOLS``.

        The console only speaks the simple query protocol, hence ClientCursor.
        """
        conninfo = make_conninfo(
            self.dsn("pgbouncer"), password=self.password, connect_timeout=CONNECT_TIMEOUT
        )
        with psycopg.connect(conninfo, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            return conn.execute(command).fetchall()
