"""Running the real ``dbbackup`` program against the harness servers.

Every test here starts ``dbbackup`` as a child process: exit codes, signal
handling and the umask are part of what is tested, and none of that can be
seen from an in-process call. The ``dbbackup_cli`` fixture gives a config file
pointing at the session's PostgreSQL server and a repository in ``tmp_path``;
``make_cli`` builds more of them (another repository, another server, other
settings).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import PostgresServer
from harness.process import descendants

# The console script beside the interpreter running the tests, else the module.
_SCRIPT = Path(sys.executable).with_name("dbbackup")
DBBACKUP_ARGV: list[str] = (
    [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "dbbackup.cli.main"]
)
DEFAULT_TIMEOUT = 120.0

# Variables of the test environment that would change what dbbackup under test
# does: libpq's, our own, and journald's (which would swallow the log lines).
_LEAKY_PREFIXES = ("PG", "DBBACKUP_")
_LEAKY_NAMES = ("JOURNAL_STREAM", "CREDENTIALS_DIRECTORY", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR")

TomlValue = str | int | bool | Sequence[str]


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without anything that steers dbbackup."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_LEAKY_PREFIXES) and key not in _LEAKY_NAMES
    }
    env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


def _toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return "[" + ", ".join(json.dumps(item, ensure_ascii=False) for item in value) + "]"


def render_toml(top: Mapping[str, TomlValue], sections: Mapping[str, Mapping[str, TomlValue]]) -> str:
    """A TOML document: top-level keys, then one table per section (JSON strings are TOML strings)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    for name, keys in sections.items():
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def run_cli(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    umask: int = -1,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``dbbackup ARGS`` to completion in a clean environment (plus ``env``)."""
    return subprocess.run(
        [*DBBACKUP_ARGV, *(str(a) for a in args)],
        env=clean_environment(env),
        input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        umask=umask,
    )


def describe(done: subprocess.CompletedProcess[str]) -> str:
    """What a failed assertion should show about a run."""
    args = " ".join(str(a) for a in done.args[len(DBBACKUP_ARGV) :])
    return (
        f"dbbackup {args} exited {done.returncode}\n"
        f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    )


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_dbbackup() -> RunCli:
    """``run_dbbackup(*args, env=..., timeout=..., umask=...)``: dbbackup without a config."""
    return run_cli


@dataclass
class Cli:
    """One configuration of dbbackup: a config file, its repository and environment."""

    config: Path
    repo: Path
    env: dict[str, str]
    top: dict[str, TomlValue] = field(default_factory=dict)
    sections: dict[str, dict[str, TomlValue]] = field(default_factory=dict)
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    describe = staticmethod(describe)

    def write_config(self) -> None:
        self.config.write_text(render_toml(self.top, self.sections), encoding="utf-8")

    def set(self, section: str, key: str, value: TomlValue) -> None:
        """Change one setting and rewrite the file."""
        self.sections.setdefault(section, {})[key] = value
        self.write_config()

    def argv(self, *args: str | Path) -> list[str]:
        return [*DBBACKUP_ARGV, "--config", str(self.config), *(str(a) for a in args)]

    def run(
        self,
        *args: str | Path,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        umask: int = -1,
    ) -> subprocess.CompletedProcess[str]:
        merged = {**self.env, **(env or {})}
        return run_cli("--config", self.config, *args, env=merged, timeout=timeout, umask=umask)

    def ok(self, *args: str | Path, timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run and insist on exit 0."""
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, describe(done)
        return done

    def popen(self, *args: str | Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """Start dbbackup in the background (stopped and reaped after the test)."""
        proc = subprocess.Popen(
            self.argv(*args),
            env=clean_environment({**self.env, **(env or {})}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(proc)
        return proc

    def backup(self, *args: str | Path) -> dict[str, Any]:
        """``backup --json ARGS``: the new set's summary."""
        summary: dict[str, Any] = json.loads(self.ok("backup", "--json", *args).stdout)
        return summary

    def list_json(self) -> list[dict[str, Any]]:
        sets: list[dict[str, Any]] = json.loads(self.ok("list", "--json").stdout)
        return sets

    def set_dir(self, set_id: str, instance: str = "default") -> Path:
        return self.repo / instance / set_id

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                kill_process_tree(proc.pid)
            proc.communicate(timeout=30)


def kill_process_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything it started (children live in sessions of their own)."""
    for victim in [*descendants(pid), pid]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            continue


MakeCli = Callable[..., Cli]


@pytest.fixture
def make_cli(tmp_path: Path) -> Iterator[MakeCli]:
    """Factory for :class:`Cli` objects, each with its own config file.

    ``make_cli(server, repo=None, password=..., **sections)``: ``sections``
    are extra TOML tables merged over the defaults (``backup={"timezone":
    "utc"}``). The password goes to the child as ``PGPASSWORD``.
    """
    made: list[Cli] = []
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)

    def make(
        server: PostgresServer | None,
        *,
        repo: Path | None = None,
        password: str | None = None,
        user: str | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        **sections: Mapping[str, TomlValue],
    ) -> Cli:
        name = f"cli{len(made)}"
        connection: dict[str, TomlValue] = {
            "host": "127.0.0.1",
            "port": port if port is not None else (server.port if server else 5432),
            "user": user or "postgres",
            "connect_timeout": "10s",
        }
        # Private runtime and state dirs: nothing of a test lands in /run or /var/lib.
        base_env = {
            "HOME": str(tmp_path),
            "RUNTIME_DIRECTORY": str(runtime),
            "STATE_DIRECTORY": str(tmp_path / "state"),
        }
        secret = password if password is not None else (server.password if server else "")
        if secret:
            base_env["PGPASSWORD"] = secret
        cli = Cli(
            config=tmp_path / f"{name}.toml",
            repo=repo if repo is not None else tmp_path / f"{name}-repo",
            env={**base_env, **(env or {})},
            top={"engine": "postgres"},
        )
        cli.sections = {
            "connection": connection,
            "storage": {"repository": str(cli.repo)},
            "backup": {"compression": "zstd"},
        }
        for section, keys in sections.items():
            cli.sections.setdefault(section, {}).update(keys)
        cli.write_config()
        made.append(cli)
        return cli

    yield make
    for cli in made:
        cli.stop_all()


@pytest.fixture
def dbbackup_cli(make_cli: MakeCli, pg_server: PostgresServer) -> Cli:
    """dbbackup configured for the session's PostgreSQL server, repository in tmp_path."""
    return make_cli(pg_server)


@pytest.fixture
def scratch_names(pg_server: PostgresServer) -> Iterator[Callable[[str], str]]:
    """``new(prefix)``: a fresh database name, dropped after the test (restore targets)."""
    names: list[str] = []

    def new(prefix: str = "target") -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        names.append(name)
        return name

    yield new
    for name in names:
        pg_server.drop_database(name)


def fill_tiny(server: PostgresServer, dbname: str, rows: int = 50) -> None:
    """A table and a sequence: enough for a set with every kind of object, fast."""
    server.execute(
        "CREATE TABLE t (id int PRIMARY KEY, label text, at timestamptz DEFAULT now());"
        f"INSERT INTO t (id, label) SELECT g, 'row ' || g FROM generate_series(1, {int(rows)}) g;"
        "CREATE SEQUENCE counter; SELECT setval('counter', 7);",
        dbname=dbname,
    )


@pytest.fixture
def tiny_db(pg_server: PostgresServer, pg_database: str) -> str:
    """A fresh database on the session server with one small table."""
    fill_tiny(pg_server, pg_database)
    return pg_database


# About 45 MB on disk: a 200k-row table and a 16 MB large object of random
# bytes. zstd backs it up in seconds; xz takes half a minute, long enough to
# interrupt a backup in the middle.
BUSY_DB_SQL = (
    "CREATE TABLE big (id int, a text, b text);"
    "INSERT INTO big SELECT g, md5(random()::text) || md5(random()::text), md5(random()::text)"
    " FROM generate_series(1, 200000) g;"
    "SELECT lo_from_bytea(0, (SELECT string_agg(decode(md5(random()::text), 'hex'), ''::bytea)"
    " FROM generate_series(1, 1000000)));"
)


@pytest.fixture(scope="session")
def busy_database(pg_server: PostgresServer) -> Iterator[str]:
    """A database whose backup takes a while (shared by the tests that interrupt backups)."""
    name = f"busy_{secrets.token_hex(6)}"
    pg_server.create_database(name)
    try:
        pg_server.execute(BUSY_DB_SQL, dbname=name)
        yield name
    finally:
        pg_server.drop_database(name)
