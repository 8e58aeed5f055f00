"""Where database passwords come from, and how they reach children.

Resolution order (first hit wins), documented in dbbackup(8):

1. ``connection.password`` — from a flag-less source: ``DBBACKUP_CONNECTION_PASSWORD``
   in the environment, else the configuration files (which must not be
   world-readable when they hold a password).
2. ``connection.password_file`` — first line of that file (must not be
   world-readable).
3. A systemd credential named ``db-password`` in ``$CREDENTIALS_DIRECTORY``
   (``LoadCredential=db-password:/etc/dbbackup/secret``).
4. The keyring entry ``db-password`` of the instance (``dbbackup secret set db-password``).
5. With ``--ask-password``, a prompt on the terminal; without a terminal the run
   stops with exit 77 instead of waiting.
6. The client library's own sources: ``PGPASSWORD``/``PGPASSFILE``/``~/.pgpass``
   for PostgreSQL, option files for MySQL.

A resolved password is registered so it is redacted from every log line and
so that no child process is ever started with it on its command line; it is
handed to children through a 0600 passfile in a private runtime directory.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import sys
import termios
from collections.abc import Sequence
from pathlib import Path

from dbbackup import secrets_store
from dbbackup.errors import (
    DbBackupError,
    InputMissingError,
    InternalError,
    PermissionDeniedError,
    ServiceUnavailableError,
)

CREDENTIAL_NAME = "db-password"
PROMPT_TIMEOUT = 300.0

_known: set[str] = set()
_prompt_allowed = False


def register(secret: str) -> None:
    """Remember a secret so logs redact it and argv checks catch it."""
    if len(secret) < 4:
        # Too short to redact without mangling ordinary text; still never on argv.
        _known.add(secret)
        return
    _known.add(secret)
    try:
        from dbbackup import log as dblog
    except ImportError:  # logging module not importable yet during early start-up
        return
    dblog.register_secret(secret)


def assert_not_in_argv(argv: Sequence[str]) -> None:
    for arg in argv:
        for secret in _known:
            if secret and secret in arg:
                raise InternalError(
                    f"refusing to start {os.path.basename(argv[0])}: a secret would be on its command line"
                )


def _read_secret_file(path: Path, what: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise InputMissingError(f"{what} {path} does not exist") from exc
    except PermissionError as exc:
        raise PermissionDeniedError(f"cannot read {what} {path}: permission denied") from exc
    if st.st_mode & stat.S_IRWXO:
        raise PermissionDeniedError(
            f"refusing to read {what} {path}: it is accessible to every user "
            f"(mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod o-rwx {path}",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError as exc:
        raise PermissionDeniedError(f"cannot read {what} {path}: permission denied") from exc
    first = text.splitlines()[0] if text else ""
    return first.rstrip("\r\n")


def allow_prompt(allowed: bool) -> None:
    """``--ask-password``: secrets missing from every other source may be asked for."""
    global _prompt_allowed
    _prompt_allowed = allowed


def systemd_credential(name: str, *, whole: bool = False) -> str | None:
    """``$CREDENTIALS_DIRECTORY/name``: its first line (or ``whole`` text), if it exists."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if not cred_dir:
        return None
    candidate = Path(cred_dir) / name
    if not candidate.exists():
        return None
    if not whole:
        return _read_secret_file(candidate, "systemd credential")
    _read_secret_file(candidate, "systemd credential")  # the same mode checks
    return candidate.read_text(encoding="utf-8")


def prompt_secret(prompt: str) -> str | None:
    """Ask on the terminal without echo, with ``--ask-password`` only; ``None`` without it.

    Never waits on anything but a terminal: without one this is exit 77.
    """
    if not _prompt_allowed:
        return None
    if not sys.stdin.isatty():
        raise PermissionDeniedError(
            "--ask-password needs a terminal, and standard input is not one",
            hint=CREDENTIAL_SOURCES_HINT,
        )
    answer = read_hidden(prompt)
    if answer:
        register(answer)
    return answer or None


def read_hidden(prompt: str, timeout: float = PROMPT_TIMEOUT) -> str:
    """One line typed at the terminal on standard input, not echoed; at most ``timeout`` seconds."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    # Echo off before the prompt shows: whatever is typed after it must not be flushed.
    termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
    sys.stderr.write(prompt)
    sys.stderr.flush()
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise PermissionDeniedError(f"no answer at the password prompt within {timeout:g} s")
        line = os.read(fd, 4096).decode("utf-8", "replace")
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
        sys.stderr.write("\n")
    return line.rstrip("\r\n")


def resolve_password(*, configured: str, password_file: str, instance: str = "default") -> str | None:
    """The password dbbackup itself supplies, or ``None`` to let the client decide."""
    password: str | None = None
    if configured:
        password = configured
    elif password_file:
        password = _read_secret_file(Path(password_file), "password file")
    else:
        password = (
            systemd_credential(CREDENTIAL_NAME)
            or secrets_store.lookup(instance, CREDENTIAL_NAME)
            or prompt_secret("Password for the database server: ")
        )
    if password:
        register(password)
        return password
    env_password = os.environ.get("PGPASSWORD")
    if env_password:
        register(env_password)
    return None


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_pgpass(path: Path, *, password: str) -> Path:
    """A 0600 libpq passfile that matches any host, port, database and user."""
    from dbbackup.fsutil import open_private_file

    with open_private_file(path) as handle:
        handle.write(f"*:*:*:*:{_pgpass_escape(password)}\n".encode())
    return path


_AUTH_MARKERS = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "access denied for user",
    "permission denied",
    "must be superuser",
    "must be owner",
)
_UNAVAILABLE_MARKERS = (
    "could not connect",
    "connection refused",
    "timeout expired",
    "could not translate host name",
    "server closed the connection unexpectedly",
    "the database system is starting up",
    "the database system is shutting down",
    "can't connect",
    "lost connection",
    "canceling statement due to statement timeout",
    "canceling statement due to lock timeout",
    "terminating connection",
    "connection to server",
    "query_wait_timeout",
    "pgbouncer",
)


def classify_client_error(text: str) -> type[DbBackupError] | None:
    """Pick the exit-code class a client tool's error message deserves."""
    lowered = text.lower()
    if "database" in lowered and "does not exist" in lowered:
        return InputMissingError
    if any(marker in lowered for marker in _AUTH_MARKERS):
        return PermissionDeniedError
    if any(marker in lowered for marker in _UNAVAILABLE_MARKERS):
        return ServiceUnavailableError
    return None


CREDENTIAL_SOURCES_HINT = (
    "give the password through DBBACKUP_CONNECTION_PASSWORD, connection.password_file, "
    "a systemd credential named 'db-password', the keyring (dbbackup secret set db-password), "
    "--ask-password at a terminal, PGPASSWORD or ~/.pgpass (see dbbackup(8), PASSWORDS)"
)


def is_missing_password(text: str) -> bool:
    lowered = text.lower()
    return "no password supplied" in lowered or "password authentication failed" in lowered


log = logging.getLogger("dbbackup.credentials")
