"""A repository on a local (or mounted) filesystem."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dbbackup import fsutil
from dbbackup.errors import InputMissingError
from dbbackup.storage.base import check_key


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def probe_write(self) -> None:
        fsutil.ensure_dir(self.root)
        fsutil.write_probe(self.root)

    def prepare(self, prefix: str) -> None:
        # Each level is created and checked on its own: parallel runs may race here.
        path = self.root
        for part in check_key(prefix).split("/"):
            path = path / part
            fsutil.ensure_dir(path)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        with fsutil.atomic_output(path) as handle:
            yield handle

    def reader(self, key: str) -> BinaryIO:
        path = self._path(key)
        if not path.exists() and not path.is_symlink():
            raise InputMissingError(f"object {key} is missing from {self.url}")
        return fsutil.open_read_nofollow(path)

    def size(self, key: str) -> int:
        try:
            st = os.lstat(self._path(key))
        except FileNotFoundError as exc:
            raise InputMissingError(f"object {key} is missing from {self.url}") from exc
        return st.st_size

    def exists(self, key: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self._path(key)).st_mode)
        except FileNotFoundError:
            return False

    def children(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            entries = sorted(os.scandir(base), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                yield entry.name

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=False)

    def local_path(self, key: str) -> Path:
        return self._path(key)
