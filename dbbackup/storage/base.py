"""What every repository backend offers: bytes under keys, nothing of databases.

Keys are ``/``-separated relative paths (``main/<set-id>/app/data/0001.copy.zst``).
Writes are atomic: a reader sees either nothing or the complete object.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol

from dbbackup.errors import UsageError


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"invalid object key {key!r}")
    return key


class Storage(Protocol):
    url: str

    def probe_write(self) -> None:
        """Prove the repository takes a write now, or fail fast (exit 73)."""

    def prepare(self, prefix: str) -> None:
        """Make ``prefix`` ready to receive objects (a directory, locally)."""

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Atomic writer: the object appears only if the block succeeds."""

    def reader(self, key: str) -> BinaryIO:
        """Stream an object; InputMissingError when absent."""

    def size(self, key: str) -> int:
        """Stored size in bytes; InputMissingError when absent."""

    def exists(self, key: str) -> bool:
        """Whether an object exists under ``key``."""

    def children(self, prefix: str) -> Iterator[str]:
        """Names directly below ``prefix`` (sets of an instance, instances)."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under ``prefix``."""
