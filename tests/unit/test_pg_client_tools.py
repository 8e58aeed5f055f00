"""Choosing the PostgreSQL client tools: the server's major version, else newer, never older."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dbbackup.engines.postgres.connection import find_client_bindir
from dbbackup.errors import ServiceUnavailableError


def install(root: Path, major: int) -> Path:
    bindir = root / str(major) / "bin"
    bindir.mkdir(parents=True)
    for tool in ("pg_dump", "pg_restore"):
        script = bindir / tool
        script.write_text(f"#!/bin/sh\necho '{tool} (PostgreSQL) {major}.3 (Debian {major}.3-1)'\n")
        script.chmod(0o755)
    return bindir


@pytest.fixture
def no_path_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_exact_major_wins(tmp_path: Path, no_path_tools: None) -> None:
    for major in (13, 15, 17):
        install(tmp_path, major)
    assert find_client_bindir(15, tmp_path) == tmp_path / "15" / "bin"


def test_nearest_newer_when_exact_is_missing(tmp_path: Path, no_path_tools: None) -> None:
    for major in (13, 16, 17):
        install(tmp_path, major)
    assert find_client_bindir(15, tmp_path) == tmp_path / "16" / "bin"


def test_only_older_tools_are_refused(tmp_path: Path, no_path_tools: None) -> None:
    install(tmp_path, 14)
    with pytest.raises(ServiceUnavailableError) as caught:
        find_client_bindir(16, tmp_path)
    assert caught.value.exit_code == 69
    assert "older than the server" in caught.value.message
    assert caught.value.hint == "install postgresql-client-16"


def test_older_pg_dump_on_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = install(tmp_path / "elsewhere", 13)
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(ServiceUnavailableError) as caught:
        find_client_bindir(15, tmp_path / "no-debian-layout")
    assert "pg_dump 13" in caught.value.message


def test_newer_pg_dump_on_path_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = install(tmp_path / "elsewhere", 17)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ.get("PATH", ""))
    assert find_client_bindir(15, tmp_path / "no-debian-layout") == bindir


def test_no_tools_at_all(tmp_path: Path, no_path_tools: None) -> None:
    with pytest.raises(ServiceUnavailableError, match="pg_dump is not installed"):
        find_client_bindir(15, tmp_path)
