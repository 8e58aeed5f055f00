"""A throwaway PostgreSQL cluster on loopback: initdb + pg_ctl in a private temp dir."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.conninfo import make_conninfo

from .net import LOOPBACK, free_port
from .process import (
    Account,
    HarnessError,
    ManagedServer,
    kill_tree,
    log_tail,
    make_owned_dir,
    make_private_dir,
    reaper,
    remove_private_dir,
    require_binary,
    run,
    server_account,
    server_env,
    wait_pid_gone,
    write_private_file,
)

# What Connection.execute() accepts together with parameters.
Query = str | sql.SQL | sql.Composed

PACKAGE = "postgresql"
PG_BINDIR_ENV = "DBBACKUP_TEST_PG_BINDIR"
STARTUP_TIMEOUT = 60
STOP_TIMEOUT = 30
CONNECT_TIMEOUT = 10

# Settings trade durability for speed: a test cluster never survives a crash.
FAST_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'128MB'",
    "max_connections": "100",
    "max_wal_senders": "10",
    "wal_level": "replica",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
}

# The harness's own sessions render values identically on every server, so a
# fingerprint taken on one cluster can be compared with one taken on another.
HARNESS_SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres "
    "-c extra_float_digits=1 -c bytea_output=hex -c statement_timeout=300000"
)

PG_HBA = """\
# written by the dbbackup test harness
local   all             all                                     trust
local   replication     all                                     trust
host    all             all             127.0.0.1/32            scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
"""


def find_bin_dir() -> Path:
    """Directory with initdb/pg_ctl: $DBBACKUP_TEST_PG_BINDIR or the newest installed."""
    override = os.environ.get(PG_BINDIR_ENV)
    if override:
        return require_binary("initdb", PACKAGE, [override]).parent
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    for candidate in sorted(versions, key=lambda p: int(p.parent.name), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    return require_binary("initdb", PACKAGE).parent


class PostgresServer(ManagedServer):
    """One PostgreSQL cluster: superuser ``postgres`` with a random password.

    TCP on 127.0.0.1 requires scram-sha-256; the unix socket in ``socket_dir``
    trusts local users. ``stop()`` removes every file the cluster had.
    """

    label = "PostgreSQL server"

    host = LOOPBACK
    superuser = "postgres"

    def __init__(self, bin_dir: Path | None = None, settings: Mapping[str, str] | None = None) -> None:
        self.bin_dir = bin_dir
        self.settings = {**FAST_SETTINGS, **(settings or {})}
        self.password = secrets.token_urlsafe(24)
        self.port = 0
        self.version = 0
        self.base_dir: Path | None = None
        self.postmaster_pid: int | None = None
        self._account: Account | None = None

    # -- layout ---------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base() / "run"

    @property
    def log_path(self) -> Path:
        return self._base() / "postgresql.log"

    @property
    def account(self) -> Account:
        if self._account is None:
            raise HarnessError("PostgreSQL server was not started")
        return self._account

    def _tool(self, name: str) -> Path:
        if self.bin_dir is None:
            raise HarnessError("PostgreSQL server was not started")
        return self.bin_dir / name

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster on first call, then start it and wait until it is ready.

        A failed start removes everything, like ``stop()``.
        """
        try:
            if self.base_dir is None:
                self._initialize()
            self._launch()
            self.version = int(self.query("SHOW server_version_num")[0][0])
        except BaseException:
            self.stop()
            raise

    def _initialize(self) -> None:
        bin_dir = self.bin_dir or find_bin_dir()
        for tool in ("initdb", "pg_ctl", "postgres"):
            require_binary(tool, PACKAGE, [bin_dir])
        self.bin_dir = bin_dir
        self._account = server_account("postgres", PACKAGE)
        self.base_dir = make_private_dir("dbbackup-pg-", self.account)
        make_owned_dir(self.socket_dir, self.account)
        self.port = free_port()
        pwfile = write_private_file(self._base() / "pwfile", self.password + "\n", self.account)
        try:
            self._run_tool(
                "initdb",
                "-D",
                self.data_dir,
                "-U",
                self.superuser,
                "--pwfile",
                pwfile,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
                timeout=120,
            )
        finally:
            pwfile.unlink()
        (self.data_dir / "pg_hba.conf").write_text(PG_HBA, encoding="utf-8")
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\ninclude 'harness.conf'\n")

    def _write_harness_conf(self) -> None:
        lines = [f"{key} = {value}" for key, value in self.settings.items()]
        lines += [f"port = {self.port}", f"unix_socket_directories = '{self.socket_dir}'"]
        path = self.data_dir / "harness.conf"
        path.unlink(missing_ok=True)
        write_private_file(path, "\n".join(lines) + "\n", self.account)

    def _launch(self) -> None:
        for attempt in range(3):
            self._write_harness_conf()
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._pg_ctl("start")
                break
            except HarnessError as exc:
                new_log = log_tail(self.log_path, limit=1_000_000)[log_offset:]
                if "already in use" in new_log and attempt < 2:
                    # Another process took the port between probe and bind.
                    self.port = free_port()
                    continue
                raise HarnessError(f"{exc}\n--- server log ---\n{new_log[-4000:]}") from exc
        self._track_postmaster()

    def _track_postmaster(self) -> None:
        pid_line = (self.data_dir / "postmaster.pid").read_text(encoding="ascii").split("\n")[0]
        self.postmaster_pid = int(pid_line)
        # pg_ctl starts the postmaster as a session leader: its pid is the group
        # id. Backends start sessions of their own but exit when it dies.
        reaper().register("group", f"{self.postmaster_pid} postgres")

    def _forget_postmaster(self) -> None:
        if self.postmaster_pid is not None:
            reaper().unregister("group", str(self.postmaster_pid))
            self.postmaster_pid = None

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._run_tool(
            "pg_ctl",
            action,
            "-D",
            self.data_dir,
            "-l",
            self.log_path,
            "-s",
            "-w",
            "-t",
            str(STARTUP_TIMEOUT),
            *extra,
            timeout=STARTUP_TIMEOUT + 30,
        )

    def _run_tool(self, name: str, *args: str | Path, timeout: float) -> str:
        return run(
            [self._tool(name), *args],
            account=self.account,
            env=server_env(self._base()),
            cwd=self._base(),
            timeout=timeout,
        )

    def restart(self) -> None:
        """Fast shutdown and start again on the same data and port."""
        self._forget_postmaster()
        self._pg_ctl("restart", "-m", "fast")
        self._track_postmaster()

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends at once: a crashed server.

        Backends go too (each runs in its own session, so this walks the
        process tree): clients see their connection drop at once instead of
        when a backend next notices that its postmaster is gone.
        ``start()`` afterwards runs crash recovery on the same data directory.
        """
        pid = self.postmaster_pid
        if pid is None:
            return
        kill_tree(pid)
        if not wait_pid_gone(pid, STOP_TIMEOUT):
            raise HarnessError(f"postmaster {pid} survived SIGKILL")
        # The dead postmaster can linger as a zombie when its parent (pid 1 of a
        # container) does not reap it, and PostgreSQL takes a lock file naming a
        # zombie for a live server. A crashed server's lock files are stale anyway.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for stale in self.socket_dir.glob(".s.PGSQL.*"):
            stale.unlink(missing_ok=True)
        self._forget_postmaster()

    def stop(self) -> None:
        """Shut the server down and delete its directory; safe to call twice."""
        if self.base_dir is None:
            return
        try:
            if self.postmaster_pid is not None:
                try:
                    self._pg_ctl("stop", "-m", "fast")
                except HarnessError:
                    self.kill()
                self._forget_postmaster()
        finally:
            remove_private_dir(self.base_dir)
            self.base_dir = None

    # -- connection details -----------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq conninfo for the code under test; the password comes from env()/a passfile."""
        return make_conninfo(host=self.host, port=self.port, user=self.superuser, dbname=dbname)

    def conninfo_with_password(self, dbname: str = "postgres") -> str:
        """conninfo for the harness's own connections (password and fixed session settings)."""
        return make_conninfo(
            self.dsn(dbname),
            password=self.password,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="dbbackup-test-harness",
            options=HARNESS_SESSION_OPTIONS,
        )

    def env(self) -> dict[str, str]:
        """libpq variables for a child process that should reach this server."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.superuser,
            "PGPASSWORD": self.password,
        }

    def write_pgpass(self, directory: Path) -> Path:
        """A 0600 ``pgpass`` file in ``directory`` matching this server; returns its path."""
        secret = self.password.replace("\\", "\\\\").replace(":", "\\:")
        line = f"{self.host}:{self.port}:*:{self.superuser}:{secret}\n"
        return write_private_file(directory / "pgpass", line)

    def make_server_dir(self, name: str) -> Path:
        """A directory beside the cluster the server may write to (e.g. a WAL archive)."""
        return make_owned_dir(self._base() / name, self.account)

    # -- SQL ----------------------------------------------------------------------

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit superuser connection; close it (use ``with``)."""
        return psycopg.connect(self.conninfo_with_password(dbname), autocommit=True)

    def execute(self, query: Query, dbname: str = "postgres", params: Params | None = None) -> None:
        with self.connect(dbname) as conn:
            conn.execute(query, params)

    def query(
        self, query: Query, dbname: str = "postgres", params: Params | None = None
    ) -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            return conn.execute(query, params).fetchall()

    def create_database(self, name: str) -> None:
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, terminating its sessions first."""
        self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            params=(name,),
        )
        force = sql.SQL(" WITH (FORCE)") if self.version >= 130000 else sql.SQL("")
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))


def pg_tool(server: PostgresServer, name: str) -> Path:
    """Path of a client tool (pg_dump, psql, ...) matching the server's version."""
    path = server.bin_dir / name if server.bin_dir else None
    if path is None or not path.is_file():
        found = shutil.which(name)
        if found is None:
            raise HarnessError(f"{name} not found beside {server.bin_dir} or on PATH")
        return Path(found)
    return path
