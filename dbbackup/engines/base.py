"""What the backup and restore actions need from a database engine.

Engines know SQL and client tools, nothing of storage: a dump is a list of
tasks, each writing plaintext into a sink it is handed; a restore is fed
readers that verify what they deliver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from dbbackup.backupset import TableRef


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> int: ...


class Source(Protocol):
    def read(self, size: int = ...) -> bytes: ...


@dataclass
class DumpTask:
    """One object of a backup: ``run`` streams its plaintext into a sink."""

    name: str  # relative object name without compression suffix, e.g. "data/0001.copy"
    role: str
    run: Callable[[Sink], None]
    table: TableRef | None = None
    size_hint: int = 0


@dataclass
class ServerInfo:
    version: str
    version_num: int
    host: str
    pooler: str | None = None


@dataclass
class DatabaseDump:
    name: str
    properties: dict[str, Any]
    consistency: dict[str, Any]
    # Run in this order: "first" tasks, then "parallel" tasks in any order.
    first: list[DumpTask] = field(default_factory=list)
    parallel: list[DumpTask] = field(default_factory=list)


class Engine(Protocol):
    name: str

    def server_info(self) -> ServerInfo: ...

    @property
    def tools_major(self) -> int: ...

    def check_restore(self, source_version_num: int, tools_major: int) -> None: ...

    def list_databases(self) -> list[str]: ...

    def begin_backup(self, databases: list[str]) -> None:
        """Called once before the databases are dumped (one shared snapshot where possible)."""

    def dump_globals(self, sink: Sink) -> None: ...

    def snapshot(self, database: str) -> AbstractContextManager[DatabaseDump]: ...

    def database_exists(self, name: str) -> bool: ...

    def prepare_target(self, name: str, properties: dict[str, Any], *, clean: bool) -> None: ...

    def restore_globals(self, script: bytes) -> list[str]: ...

    def restore_ddl(self, target: str, section: str, source: Source, *, jobs: int = 1) -> None: ...

    def restore_table(
        self, target: str, table: TableRef, source: Source, finish: Callable[[], None]
    ) -> int: ...

    def restore_sql(self, target: str, script: bytes) -> None: ...

    def close(self) -> None: ...


def iter_chunks(source: Source, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := source.read(size):
        yield chunk
