"""Fixtures shared by every test: real servers and real faults.

Servers are session-scoped (one of each per test run, started on first use);
databases and fault directories are per test. See ``tests/harness``.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# ``from harness import ...`` must work however pytest was started (see
# tests/harness/__init__.py for why it is never ``tests.harness``).
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from harness import CuttingProxy, MariaDBServer, PgBouncer, PostgresServer  # noqa: E402
from harness.faults import full_dir as _full_dir  # noqa: E402
from harness.faults import read_only_dir  # noqa: E402
from harness.process import REQUIRE_ENV, servers_required  # noqa: E402


def pytest_report_header() -> list[str]:
    who = "as postgres/mysql system users" if os.geteuid() == 0 else "as the current user"
    policy = "fail" if servers_required() else "skip"
    return [f"dbbackup test servers: run {who}; missing server binaries {policy} ({REQUIRE_ENV})"]


def _unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session; superuser ``postgres``."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_bouncer(pg_server: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode in front of ``pg_server``."""
    bouncer = PgBouncer(pg_server, pool_mode="transaction")
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """A MariaDB server for the whole session; ``root`` with a password, binlog on."""
    server = MariaDBServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> Iterator[str]:
    """Name of a fresh, empty database on ``pg_server``, dropped after the test."""
    name = _unique_name("test")
    pg_server.create_database(name)
    try:
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def mariadb_database(mariadb_server: MariaDBServer) -> Iterator[str]:
    """Name of a fresh, empty database on ``mariadb_server``, dropped after the test."""
    name = _unique_name("test")
    mariadb_server.create_database(name)
    try:
        yield name
    finally:
        mariadb_server.drop_database(name)


@pytest.fixture
def readonly_dir() -> Iterator[Path]:
    """An empty directory where writes really fail (read-only tmpfs as root, 0500 otherwise)."""
    with read_only_dir() as path:
        yield path


@pytest.fixture
def full_dir() -> Iterator[Path]:
    """A directory on a 2 MiB tmpfs, so writing more fails with ENOSPC. Needs root."""
    with _full_dir("2m") as path:
        yield path


@pytest.fixture
def cutting_proxy() -> Iterator[Callable[..., CuttingProxy]]:
    """Factory ``(host, port, cut_after_bytes=None) -> CuttingProxy``; all stopped after the test."""
    proxies: list[CuttingProxy] = []

    def make(host: str, port: int, cut_after_bytes: int | None = None) -> CuttingProxy:
        proxy = CuttingProxy(host, port, cut_after_bytes)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
