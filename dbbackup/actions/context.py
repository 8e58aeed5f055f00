"""What every action needs, built once from the settings: storage, engine, catalog."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbbackup import credentials, fsutil, keys
from dbbackup.catalog import Catalog
from dbbackup.engines.base import Engine
from dbbackup.errors import ConfigError
from dbbackup.pipeline.crypto import Identity
from dbbackup.storage import Storage, open_storage


@dataclass
class Runtime:
    settings: Any  # dbbackup.config.Settings
    storage: Storage
    workdir: Path
    _catalog: Catalog | None = field(default=None, repr=False)
    _identities: list[Identity] | None = field(default=None, repr=False)

    @property
    def instance(self) -> str:
        return str(self.settings.instance)

    def catalog_path(self) -> Path:
        if self.settings.catalog.path:
            return Path(self.settings.catalog.path)
        if hasattr(self.storage, "root"):
            return Path(self.storage.root) / "catalog.sqlite"
        raise ConfigError(
            "catalog.path must be set when the repository is not a local directory",
            hint='set [catalog] path = "/var/lib/dbbackup/catalog.sqlite"',
        )

    def catalog(self) -> Catalog:
        if self._catalog is None:
            path = self.catalog_path()
            fsutil.ensure_dir(path.parent)
            self._catalog = Catalog.open(path)
        return self._catalog

    def identities(self) -> list[Identity]:
        """The age identities that open encrypted sets (loaded once, on first need)."""
        if self._identities is None:
            self._identities = keys.load_identities(self.settings.encryption, instance=self.instance)
        return self._identities

    def engine(self, *, timeout: float) -> Engine:
        connection = self.settings.connection
        password = credentials.resolve_password(
            configured=connection.password, password_file=connection.password_file, instance=self.instance
        )
        engine_name = self.settings.engine
        if engine_name == "postgres":
            from dbbackup.engines.postgres import (
                PostgresEngine,
                direct_from_settings,
                endpoint_from_settings,
            )

            passfile = None
            if password:
                passfile = credentials.write_pgpass(self.workdir / "pgpass", password=password)
            endpoint = endpoint_from_settings(connection, password=password, passfile=passfile)
            return PostgresEngine(endpoint, timeout=timeout, direct=direct_from_settings(connection))
        if engine_name == "mysql":
            from dbbackup.engines.mysql import engine_from_settings

            return engine_from_settings(self.settings, password=password, timeout=timeout)
        raise ConfigError(
            f"engine {engine_name!r} is not available in this version",
            hint='use engine = "postgres"',
        )

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None


@contextlib.contextmanager
def open_runtime(settings: Any) -> Iterator[Runtime]:
    storage = open_storage(settings.storage.repository)
    with fsutil.private_workdir("run") as workdir:
        runtime = Runtime(settings=settings, storage=storage, workdir=workdir)
        try:
            yield runtime
        finally:
            runtime.close()
