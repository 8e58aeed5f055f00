"""dbbackup.credentials: where passwords come from, files that are refused, pgpass escaping."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import psycopg
import pytest
from harness import PostgresServer
from psycopg import sql

from dbbackup import credentials
from dbbackup.errors import (
    EX_NOINPUT,
    EX_NOPERM,
    DbBackupError,
    InputMissingError,
    InternalError,
    PermissionDeniedError,
    ServiceUnavailableError,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret known yet, and none of the test environment's password sources."""
    monkeypatch.setattr(credentials, "_known", set())
    for name in ("PGPASSWORD", "PGPASSFILE", "CREDENTIALS_DIRECTORY", "DBBACKUP_CONNECTION_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def _secret_file(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def _blocked_on_argv(secret: str) -> bool:
    try:
        credentials.assert_not_in_argv(["pg_dump", f"--x={secret}"])
    except InternalError:
        return True
    return False


# -- password files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_password_file_readable_only_by_owner_and_group_is_used(tmp_path: Path, mode: int) -> None:
    path = _secret_file(tmp_path / "pw", "s3cret-from-file\r\nsecond line\n", mode)
    assert credentials.resolve_password(configured="", password_file=str(path)) == "s3cret-from-file"
    assert _blocked_on_argv("s3cret-from-file")


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o601, 0o666])
def test_password_file_open_to_everyone_is_refused(tmp_path: Path, mode: int) -> None:
    path = _secret_file(tmp_path / "pw", "leaked\n", mode)
    with pytest.raises(PermissionDeniedError) as caught:
        credentials.resolve_password(configured="", password_file=str(path))
    assert caught.value.exit_code == EX_NOPERM
    assert str(path) in caught.value.message
    assert f"{mode:04o}" in caught.value.message
    assert caught.value.hint == f"chmod o-rwx {path}"
    assert not _blocked_on_argv("leaked"), "a refused file's content was registered"


def test_missing_password_file_is_input_missing(tmp_path: Path) -> None:
    with pytest.raises(InputMissingError) as caught:
        credentials.resolve_password(configured="", password_file=str(tmp_path / "nope"))
    assert caught.value.exit_code == EX_NOINPUT


def test_configured_password_wins_and_the_file_is_not_read(tmp_path: Path) -> None:
    path = _secret_file(tmp_path / "pw", "from-file\n", 0o644)
    assert credentials.resolve_password(configured="from-config", password_file=str(path)) == "from-config"


def test_systemd_credential_is_used_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    path = _secret_file(tmp_path / credentials.CREDENTIAL_NAME, "from-systemd\n", 0o400)
    assert credentials.resolve_password(configured="", password_file="") == "from-systemd"
    path.chmod(0o644)
    with pytest.raises(PermissionDeniedError):
        credentials.resolve_password(configured="", password_file="")


def test_pgpassword_is_left_to_libpq_but_kept_off_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "from-libpq-env")
    assert credentials.resolve_password(configured="", password_file="") is None
    assert _blocked_on_argv("from-libpq-env")


def test_short_secrets_are_still_kept_off_argv() -> None:
    credentials.register("pw1")
    assert _blocked_on_argv("pw1")
    assert not _blocked_on_argv("other")


# -- the passfile handed to children -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "line"),
    [
        ("plain", "*:*:*:*:plain"),
        ("a:b", "*:*:*:*:a\\:b"),
        ("back\\slash", "*:*:*:*:back\\\\slash"),
        ("\\:", "*:*:*:*:\\\\\\:"),
        ("*", "*:*:*:*:*"),
    ],
)
def test_pgpass_escapes_colons_and_backslashes(tmp_path: Path, password: str, line: str) -> None:
    path = credentials.write_pgpass(tmp_path / "pgpass", password=password)
    assert path.read_text(encoding="utf-8") == line + "\n"
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_pgpass_never_overwrites_or_follows(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious", encoding="utf-8")
    link = tmp_path / "pgpass"
    link.symlink_to(victim)
    for path in (victim, link):
        with pytest.raises(DbBackupError):
            credentials.write_pgpass(path, password="x")
    assert victim.read_text(encoding="utf-8") == "precious"


def test_libpq_accepts_the_escaped_password(pg_server: PostgresServer, tmp_path: Path) -> None:
    role = f"dbb_pgpass_{secrets.token_hex(4)}"
    password = "a:b\\c:\\:d" + secrets.token_hex(4)
    pg_server.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
    )
    try:
        passfile = credentials.write_pgpass(tmp_path / "pgpass", password=password)
        with psycopg.connect(
            host=pg_server.host,
            port=pg_server.port,
            user=role,
            dbname="postgres",
            passfile=str(passfile),
            connect_timeout=10,
        ) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
    finally:
        pg_server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- what client tools' messages mean ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('FATAL:  database "shop" does not exist', InputMissingError),
        ('FATAL:  password authentication failed for user "app"', PermissionDeniedError),
        ("fe_sendauth: no password supplied", PermissionDeniedError),
        ("ERROR:  must be owner of table t", PermissionDeniedError),
        ('connection to server at "10.0.0.1", port 5432 failed: Connection refused', ServiceUnavailableError),
        ("timeout expired", ServiceUnavailableError),
        ("ERROR:  canceling statement due to lock timeout", ServiceUnavailableError),
        ('ERROR:  syntax error at or near "x"', None),
        ("", None),
    ],
)
def test_client_messages_are_classified(text: str, kind: type[DbBackupError] | None) -> None:
    assert credentials.classify_client_error(text) is kind


def test_missing_password_is_recognised() -> None:
    assert credentials.is_missing_password("fe_sendauth: no password supplied")
    assert credentials.is_missing_password('FATAL: password authentication failed for user "x"')
    assert not credentials.is_missing_password("could not connect to server")
