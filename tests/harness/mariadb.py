"""A throwaway MariaDB server: mariadb-install-db + mariadbd in a private temp dir."""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pymysql

from .net import LOOPBACK, free_port, wait_until
from .process import (
    Account,
    HarnessError,
    ManagedServer,
    log_tail,
    make_owned_dir,
    make_private_dir,
    remove_private_dir,
    require_binary,
    run,
    server_account,
    server_env,
    spawn,
    stop_process,
    write_private_file,
)

PACKAGE = "mariadb-server"
STARTUP_TIMEOUT = 60
STOP_TIMEOUT = 30
CONNECT_TIMEOUT = 10
QUERY_TIMEOUT = 300

Params = Sequence[Any] | dict[str, Any] | None


def quote_ident(name: str) -> str:
    """A MariaDB identifier in backticks, with embedded backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


class MariaDBServer(ManagedServer):
    """One MariaDB server: ``root`` with a random password, binlog on.

    Reachable over TCP on 127.0.0.1 and on the unix socket ``socket``; both
    require the password. ``stop()`` removes every file the server had.
    """

    label = "MariaDB server"

    host = LOOPBACK
    user = "root"

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.extra_args = list(extra_args)
        self.password = secrets.token_urlsafe(24)
        self.port = 0
        self.version = ""
        self.base_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._account: Account | None = None
        self._password_set = False

    # -- layout ---------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def socket(self) -> Path:
        return self._base() / "mysqld.sock"

    @property
    def binlog_basename(self) -> Path:
        """Binary logs are ``<binlog_basename>.000001`` ... with an ``.index``."""
        return self._base() / "binlog"

    @property
    def log_path(self) -> Path:
        return self._base() / "error.log"

    @property
    def account(self) -> Account:
        if self._account is None:
            raise HarnessError("MariaDB server was not started")
        return self._account

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Create the data directory on first call, then start and wait until ready.

        A failed start removes everything, like ``stop()``.
        """
        try:
            if self.base_dir is None:
                self._initialize()
            self._launch()
            if not self._password_set:
                self._set_root_password()
            self.version = str(self.query("SELECT VERSION()")[0][0])
        except BaseException:
            self.stop()
            raise

    def _initialize(self) -> None:
        install_db = require_binary("mariadb-install-db", PACKAGE)
        require_binary("mariadbd", PACKAGE)
        self._account = server_account("mysql", PACKAGE)
        self.base_dir = make_private_dir("dbbackup-mariadb-", self.account)
        make_owned_dir(self.data_dir, self.account)
        make_owned_dir(self._base() / "tmp", self.account)
        self.port = free_port()
        run(
            [
                install_db,
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                f"--datadir={self.data_dir}",
                "--skip-test-db",
                "--skip-name-resolve",
                f"--tmpdir={self._base() / 'tmp'}",
            ],
            account=self.account,
            env=server_env(self._base()),
            cwd=self._base(),
            timeout=180,
        )

    def _argv(self) -> list[str | Path]:
        base = self._base()
        return [
            require_binary("mariadbd", PACKAGE),
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={base / 'mariadbd.pid'}",
            f"--log-error={self.log_path}",
            f"--tmpdir={base / 'tmp'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=256M",
            "--innodb-flush-log-at-trx-commit=0",
            f"--log-bin={self.binlog_basename}",
            "--server-id=1",
            "--max-allowed-packet=1G",
            # What Debian's packaged server.cnf sets; the compiled default is latin1.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            *self.extra_args,
        ]

    def _launch(self) -> None:
        for attempt in range(3):
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with (self._base() / "stdout.log").open("ab") as out:
                self._proc = spawn(
                    self._argv(),
                    account=self.account,
                    env=server_env(self._base()),
                    cwd=self._base(),
                    log=out,
                )
            try:
                wait_until(self._ready, timeout=STARTUP_TIMEOUT, what="mariadbd to accept logins")
                return
            except (HarnessError, TimeoutError) as exc:
                self._halt(signal.SIGKILL)
                new_log = log_tail(self.log_path, limit=1_000_000)[log_offset:]
                if "already in use" in new_log and attempt < 2:
                    # Another process took the port between probe and bind.
                    self.port = free_port()
                    continue
                raise HarnessError(f"{exc}\n--- error log ---\n{new_log[-4000:]}") from exc

    def _ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            code = self._proc.returncode if self._proc else None
            raise HarnessError(f"mariadbd exited with status {code}")
        try:
            pymysql.connect(
                unix_socket=str(self.socket),
                user=self.user,
                password=self.password if self._password_set else "",
                connect_timeout=2,
            ).close()
        except pymysql.err.OperationalError:
            return False
        return True

    def _set_root_password(self) -> None:
        # Fresh from mariadb-install-db, root@localhost has no password and only
        # the socket reaches it; TCP logins from 127.0.0.1 need their own account.
        with (
            pymysql.connect(
                unix_socket=str(self.socket),
                user=self.user,
                password="",
                connect_timeout=CONNECT_TIMEOUT,
                autocommit=True,
            ) as conn,
            conn.cursor() as cur,
        ):
            # The installer also makes password-less root@<hostname> and root@::1,
            # which a server bound to 127.0.0.1 without name resolution never uses.
            cur.execute(
                "SELECT host FROM mysql.user WHERE user = 'root' AND host NOT IN ('localhost', '127.0.0.1')"
            )
            for (host,) in cur.fetchall():
                cur.execute("DROP USER 'root'@%s", (host,))
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
            cur.execute("GRANT PROXY ON ''@'%' TO 'root'@'127.0.0.1' WITH GRANT OPTION")
            for host in ("localhost", "127.0.0.1"):
                cur.execute("ALTER USER 'root'@%s IDENTIFIED BY %s", (host, self.password))
        self._password_set = True

    def _halt(self, sig: int) -> None:
        if self._proc is not None:
            stop_process(self._proc, sig, timeout=STOP_TIMEOUT)
            self._proc = None

    def restart(self) -> None:
        """Clean shutdown and start again on the same data and port."""
        self._halt(signal.SIGTERM)
        self._launch()

    def kill(self) -> None:
        """SIGKILL mariadbd: a crash. ``start()`` afterwards runs InnoDB recovery."""
        self._halt(signal.SIGKILL)

    def stop(self) -> None:
        """Shut the server down and delete its directory; safe to call twice."""
        try:
            self._halt(signal.SIGTERM)
        finally:
            if self.base_dir is not None:
                remove_private_dir(self.base_dir)
                self.base_dir = None

    # -- connection details -----------------------------------------------------

    def env(self) -> dict[str, str]:
        """Variables the mariadb/mysql clients read, for a child process."""
        return {
            "MYSQL_HOST": self.host,
            "MYSQL_TCP_PORT": str(self.port),
            "MYSQL_UNIX_PORT": str(self.socket),
            "MYSQL_PWD": self.password,
        }

    def write_defaults_file(self, directory: Path) -> Path:
        """A 0600 ``my.cnf`` in ``directory`` with a [client] section for this server."""
        text = f'[client]\nhost={self.host}\nport={self.port}\nuser={self.user}\npassword="{self.password}"\n'
        return write_private_file(directory / "my.cnf", text)

    # -- SQL ----------------------------------------------------------------------

    def connect(self, database: str | None = None) -> pymysql.connections.Connection[Any]:
        """An autocommit root connection over TCP; close it (use ``with``)."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=QUERY_TIMEOUT,
            write_timeout=QUERY_TIMEOUT,
        )

    def execute(self, query: str, database: str | None = None, params: Params = None) -> None:
        with self.connect(database) as conn, conn.cursor() as cur:
            cur.execute(query, params)

    def query(self, query: str, database: str | None = None, params: Params = None) -> list[tuple[Any, ...]]:
        with self.connect(database) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall())

    def create_database(self, name: str) -> None:
        self.execute(f"CREATE DATABASE {quote_ident(name)}")

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
