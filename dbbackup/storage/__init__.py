"""Repository backends behind one interface."""

from __future__ import annotations

from pathlib import Path

from dbbackup.errors import ConfigError
from dbbackup.storage.base import Storage
from dbbackup.storage.local import LocalStorage


def open_storage(repository: str) -> Storage:
    if "://" in repository and not repository.startswith("file://"):
        scheme = repository.split("://", 1)[0]
        raise ConfigError(
            f"storage.repository: the {scheme}:// backend is not available in this version",
            hint="use a local or mounted directory path",
        )
    return LocalStorage(Path(repository.removeprefix("file://")))


__all__ = ["LocalStorage", "Storage", "open_storage"]
