"""Exception hierarchy: every error knows its exit code (sysexits.h).

The CLI maps an escaping ``DbBackupError`` to ``exit_code`` and prints
``message`` plus ``hint`` (what the user should do next).
"""

from __future__ import annotations

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class DbBackupError(Exception):
    """Base class; ``exit_code`` is what the process exits with."""

    exit_code = EX_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class GeneralError(DbBackupError):
    exit_code = EX_FAILURE


class UsageError(DbBackupError):
    exit_code = EX_USAGE


class DataError(DbBackupError):
    """Corrupt, truncated or tampered backup data; checksum mismatch."""

    exit_code = EX_DATAERR


class InputMissingError(DbBackupError):
    """A backup set, object or input file does not exist."""

    exit_code = EX_NOINPUT


class ServiceUnavailableError(DbBackupError):
    """Database, pooler or storage cannot be reached or timed out."""

    exit_code = EX_UNAVAILABLE


class InternalError(DbBackupError):
    exit_code = EX_SOFTWARE


class CannotCreateError(DbBackupError):
    """The output (repository, set, file) cannot be created."""

    exit_code = EX_CANTCREAT


class IOFailure(DbBackupError):
    """Reading or writing failed midway: short read, ENOSPC, dead child."""

    exit_code = EX_IOERR


class TemporaryFailure(DbBackupError):
    """Retrying later may succeed (lock held, catalog busy)."""

    exit_code = EX_TEMPFAIL


class PermissionDeniedError(DbBackupError):
    """Unsafe ownership or mode, missing credentials, access refused."""

    exit_code = EX_NOPERM


class ConfigError(DbBackupError):
    exit_code = EX_CONFIG
