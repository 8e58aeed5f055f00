"""Secrets kept in the system keyring (``dbbackup secret set NAME``).

Entries live under the service ``dbbackup/<instance>`` with the secret's name
as user name: ``db-password``, ``age-identity``, ``age-passphrase``. The
``keyring`` package and a backend for it are optional; without them lookups
find nothing and storing fails with a hint. Every keyring call runs with a
deadline, because a locked keyring may wait for a person to unlock it.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from dbbackup.errors import DbBackupError, ServiceUnavailableError

log = logging.getLogger("dbbackup.secrets")

NAMES = ("db-password", "age-identity", "age-passphrase")
KEYRING_TIMEOUT = 10.0
_T = TypeVar("_T")


def service_name(instance: str) -> str:
    return f"dbbackup/{instance}"


def _keyring_module() -> object | None:
    try:
        return importlib.import_module("keyring")
    except ImportError:
        return None


def _with_deadline(call: Callable[[], _T], what: str) -> _T:
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="keyring", daemon=True)
    worker.start()
    worker.join(KEYRING_TIMEOUT)
    if not outcome:
        raise ServiceUnavailableError(
            f"the keyring gave no answer within {KEYRING_TIMEOUT:g} s while {what}",
            hint="unlock the keyring, or use a systemd credential or a file instead",
        )
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


def _is_keyring_error(exc: BaseException) -> bool:
    # keyring.errors.KeyringError and backends' RuntimeErrors (no D-Bus session, locked store).
    return isinstance(exc, RuntimeError | OSError) or type(exc).__module__.startswith(("keyring", "keyrings"))


def lookup(instance: str, name: str) -> str | None:
    """The stored secret, or ``None`` when there is no keyring, no entry, or the keyring fails."""
    module = _keyring_module()
    if module is None:
        return None
    get_password: Callable[[str, str], str | None] = module.get_password  # type: ignore[attr-defined]
    try:
        value = _with_deadline(lambda: get_password(service_name(instance), name), f"reading {name}")
    except DbBackupError as exc:
        log.warning("keyring skipped: %s", exc.message)
        return None
    except Exception as exc:
        if not _is_keyring_error(exc):
            raise
        log.debug("no keyring entry %s for %s: %s", name, instance, exc)
        return None
    return value or None


def store(instance: str, name: str, value: str) -> None:
    """Save (or replace) a secret; exit 69 with a hint when no keyring is usable."""
    module = _keyring_module()
    if module is None:
        raise ServiceUnavailableError(
            "the Python keyring package is not installed",
            hint="install python3-keyring (and a backend such as python3-secretstorage), "
            "or use a systemd credential instead (see docs/security.md)",
        )
    set_password: Callable[[str, str, str], None] = module.set_password  # type: ignore[attr-defined]
    try:
        _with_deadline(lambda: set_password(service_name(instance), name, value), f"storing {name}")
    except DbBackupError:
        raise
    except Exception as exc:
        if not _is_keyring_error(exc):
            raise
        raise ServiceUnavailableError(
            f"cannot store {name} in the keyring: {exc}",
            hint="check that a keyring backend is available (`keyring --list-backends`), "
            "or use a systemd credential instead",
        ) from exc


def delete(instance: str, name: str) -> bool:
    """Remove a secret; ``False`` when there was none."""
    module = _keyring_module()
    if module is None:
        return False
    delete_password: Callable[[str, str], None] = module.delete_password  # type: ignore[attr-defined]
    try:
        _with_deadline(lambda: delete_password(service_name(instance), name), f"deleting {name}")
    except DbBackupError:
        raise
    except Exception as exc:
        if not _is_keyring_error(exc):
            raise
        log.debug("nothing deleted for %s: %s", name, exc)
        return False
    return True
