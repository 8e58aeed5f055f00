"""Secrets never leak: not on any command line, not in any log line, not left on disk.

The database password, an encryption passphrase and an age identity are given
to the real ``dbbackup`` program the ways users give them; the tests then look
where a leak would show: ``/proc/*/cmdline`` of dbbackup and of every child it
starts (sampled continuously while it runs), every line it logs in text and
JSON at debug level, and the runtime directory during and after a run, also
one ended by SIGTERM.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import MariaDBServer, PostgresServer
from harness.process import descendants

if TYPE_CHECKING:
    from conftest import Cli, MakeCli

pytestmark = pytest.mark.timeout(240)

MYSQL_ENGINE = Path(__file__).resolve().parents[2] / "dbbackup" / "engines" / "mysql"


def new_identity(directory: Path) -> tuple[Path, str, str]:
    """(identity file, its recipient, its secret key line) from ``dbbackup key generate``."""
    from conftest import run_cli

    path = directory / "secret.key"
    done = run_cli("key", "generate", "-o", path, timeout=30)
    assert done.returncode == 0, done.stderr
    secret = next(line for line in path.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    return path, done.stdout.strip(), secret


@dataclass
class CmdlineWatch:
    """Samples the command lines of a process tree until the root exits."""

    root: int
    secrets: Sequence[str]
    seen: set[str] = field(default_factory=set)
    leaks: list[str] = field(default_factory=list)
    samples: int = 0

    def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            pids = [self.root, *descendants(self.root)]
            for pid in pids:
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue  # it exited between the listing and the read
                if not raw:
                    continue
                argv = raw.decode("utf-8", "replace").split("\0")
                self.seen.add(os.path.basename(argv[0]))
                self.seen.update(os.path.basename(a) for a in argv[1:3] if "dbbackup" in a)
                text = " ".join(argv)
                self.leaks += [f"pid {pid} ({argv[0]}) shows a secret" for s in self.secrets if s in text]
            self.samples += 1
            try:
                os.kill(self.root, 0)
            except ProcessLookupError:
                return  # reaped by communicate()


def watched_run(
    cli: Cli,
    args: Sequence[str],
    secrets: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
) -> tuple[CmdlineWatch, int, str]:
    """Run ``dbbackup ARGS`` while sampling its process tree's command lines."""
    proc = cli.popen(*args, env=env)
    watch = CmdlineWatch(proc.pid, secrets)
    sampler = threading.Thread(target=watch.run, args=(time.monotonic() + timeout,), daemon=True)
    sampler.start()
    _out, err = proc.communicate(timeout=timeout)
    sampler.join(10)
    return watch, proc.returncode, err


@pytest.fixture
def secret_cli(
    make_cli: MakeCli, pg_server: PostgresServer, tmp_path: Path
) -> Iterator[tuple[Cli, list[str]]]:
    """dbbackup with the password from DBBACKUP_CONNECTION_PASSWORD and an encrypted repository."""
    identity, recipient, secret_key = new_identity(tmp_path)
    cli = make_cli(
        pg_server,
        password="",
        env={"DBBACKUP_CONNECTION_PASSWORD": pg_server.password},
        encryption={"recipients": [recipient], "identity_file": str(identity)},
    )
    yield cli, [pg_server.password, secret_key]


def test_no_secret_on_any_command_line_during_backup_and_restore(
    secret_cli: tuple[Cli, list[str]], busy_database: str, scratch_names: Any, pg_server: PostgresServer
) -> None:
    cli, secrets = secret_cli
    watch, code, err = watched_run(cli, ["backup", "--all"], secrets)
    assert code == 0, err
    assert watch.leaks == []
    assert "pg_dump" in watch.seen, watch.seen  # pg_dumpall may be too quick to be sampled
    target = scratch_names("cmdline")
    watch, code, err = watched_run(
        cli, ["restore", "latest", "--database", busy_database, "--target-db", target], secrets
    )
    assert code == 0, err
    assert watch.leaks == []
    assert "pg_restore" in watch.seen, watch.seen
    assert watch.samples > 10


@pytest.mark.skipif(
    not MYSQL_ENGINE.exists(), reason="the mysql engine (dbbackup/engines/mysql) is not there yet"
)
def test_no_secret_on_any_command_line_with_mariadb(
    make_cli: MakeCli, mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    mariadb_server.execute("CREATE TABLE t (id int primary key, v text)", database=mariadb_database)
    mariadb_server.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')", database=mariadb_database)
    cli = make_cli(
        None,
        password="",
        user="root",
        port=mariadb_server.port,
        env={"DBBACKUP_CONNECTION_PASSWORD": mariadb_server.password},
    )
    cli.top["engine"] = "mysql"
    cli.write_config()
    secrets = [mariadb_server.password]
    watch, code, err = watched_run(cli, ["backup", "--database", mariadb_database], secrets)
    if code == 78 and "is not available in this version" in err:
        pytest.skip("the mysql engine is not wired into dbbackup yet")
    assert code == 0, err
    assert watch.leaks == []
    target = f"{mariadb_database}_r"
    try:
        watch, code, err = watched_run(
            cli, ["restore", "latest", "--database", mariadb_database, "--target-db", target], secrets
        )
    finally:
        mariadb_server.drop_database(target)
    assert code == 0, err
    assert watch.leaks == []
    assert _runtime_entries(tmp_path / "runtime") == []


def _log_runs(
    cli: Cli, database: str, target: str, log_format: str
) -> list[subprocess.CompletedProcess[str]]:
    common = ["--log-level", "debug", "--log-format", log_format]
    runs = [cli.run(*common, "backup", "--database", database)]
    for args in (
        ["verify", "latest", "--deep"],
        ["restore", "latest", "--target-db", target, "--clean"],
        ["show", "latest", "--json"],
        ["list", "--json"],
        ["config", "show", "--sources"],
    ):
        runs.append(cli.run(*common, *args))
    return runs


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_in_any_log_line(
    secret_cli: tuple[Cli, list[str]], tiny_db: str, scratch_names: Any, tmp_path: Path, log_format: str
) -> None:
    cli, secrets = secret_cli
    log_file = tmp_path / f"dbbackup-{log_format}.log"
    cli.set("log", "file", str(log_file))
    runs = _log_runs(cli, tiny_db, scratch_names("logs"), log_format)
    for done in runs:
        assert done.returncode == 0, cli.describe(done)
    # A failed login must not echo the password it tried either.
    wrong = "wrong-" + secrets[0][::-1]
    failed = cli.run(
        "--log-level",
        "debug",
        "--log-format",
        log_format,
        "backup",
        "--database",
        tiny_db,
        env={"DBBACKUP_CONNECTION_PASSWORD": wrong},
    )
    assert failed.returncode == 77, cli.describe(failed)
    text = "\n".join(d.stdout + d.stderr for d in [*runs, failed]) + log_file.read_text(encoding="utf-8")
    assert len(text.splitlines()) > 50  # debug logging really was on
    for secret in [*secrets, wrong]:
        assert secret not in text


def test_no_passphrase_in_logs(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, tmp_path: Path, scratch_names: Any
) -> None:
    passphrase = "s3cret passphrase " + os.urandom(6).hex()
    passfile = tmp_path / "passphrase"
    passfile.write_text(passphrase + "\n")
    passfile.chmod(0o600)
    cli = make_cli(pg_server, encryption={"passphrase_file": str(passfile)})
    made = cli.run("--log-level", "debug", "--log-format", "json", "backup", "--database", tiny_db)
    restored = cli.run(
        "--log-level",
        "debug",
        "restore",
        "latest",
        "--target-db",
        scratch_names("pp"),
        env={"DBBACKUP_ENCRYPTION_PASSPHRASE_FILE": "", "DBBACKUP_PASSPHRASE": passphrase},
    )
    for done in (made, restored):
        assert done.returncode == 0, cli.describe(done)
        assert passphrase not in done.stdout + done.stderr


def _runtime_entries(runtime: Path) -> list[Path]:
    return sorted(p for p in runtime.rglob("*") if not p.name.endswith(".lock"))


def test_passfile_is_private_while_used_and_gone_after_sigterm(
    secret_cli: tuple[Cli, list[str]], busy_database: str, tmp_path: Path
) -> None:
    cli, secrets = secret_cli
    cli.set("backup", "compression", "xz")  # slow enough to be stopped in the middle
    runtime = Path(cli.env["RUNTIME_DIRECTORY"])
    proc = cli.popen("backup", "--database", busy_database)
    deadline = time.monotonic() + 60
    passfiles: list[Path] = []
    while not passfiles and time.monotonic() < deadline and proc.poll() is None:
        passfiles = [p for p in runtime.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
        time.sleep(0.01)
    assert passfiles, "no passfile appeared in the runtime directory"
    [passfile] = passfiles
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert passfile.stat().st_uid == os.geteuid()
    for directory in (passfile.parent, runtime):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert secrets[0] in passfile.read_text()
    time.sleep(0.5)  # let pg_dump start with it
    assert proc.poll() is None, "the backup finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert _runtime_entries(runtime) == []
    assert not list(cli.repo.glob("default/*/manifest.json"))


def test_passfile_is_removed_after_a_normal_run(secret_cli: tuple[Cli, list[str]], tiny_db: str) -> None:
    cli, _secrets = secret_cli
    cli.backup("--database", tiny_db)
    assert _runtime_entries(Path(cli.env["RUNTIME_DIRECTORY"])) == []


def test_ask_password_without_a_terminal_exits_77_listing_the_sources(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    cli = make_cli(pg_server, password="")
    done = cli.run("--ask-password", "backup", "--database", tiny_db)
    assert done.returncode == 77, cli.describe(done)
    assert "needs a terminal" in done.stderr
    for source in ("DBBACKUP_CONNECTION_PASSWORD", "password_file", "db-password", "keyring", "~/.pgpass"):
        assert source in done.stderr


def test_ask_password_reads_the_password_at_a_terminal(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str
) -> None:
    from conftest import clean_environment

    cli = make_cli(pg_server, password="")
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            cli.argv("--ask-password", "--log-level", "debug", "backup", "--database", tiny_db),
            env=clean_environment(cli.env),
            stdin=secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        cli.started.append(proc)  # type: ignore[arg-type]
        os.close(secondary)
        assert proc.stderr is not None
        prompt = b""
        deadline = time.monotonic() + 30
        while b"Password" not in prompt and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                prompt += os.read(proc.stderr.fileno(), 4096)
        assert b"Password for the database server" in prompt
        os.write(primary, pg_server.password.encode() + b"\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(primary)
    assert proc.returncode == 0, err.decode()
    assert pg_server.password.encode() not in out + err + prompt
