"""Under systemd a backup reports progress, keeps its start timeout alive, and says when it stops.

A real AF_UNIX datagram socket stands in for systemd's NOTIFY_SOCKET.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MakeCli
from harness import PostgresServer

pytestmark = pytest.mark.timeout(180)


class NotifyCollector:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[dict[str, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def values(self, key: str) -> list[str]:
        return [m[key] for m in self.messages if key in m]


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[NotifyCollector]:
    found = NotifyCollector(tmp_path / "notify.sock")
    yield found
    found.close()


def test_backup_reports_status_extends_timeout_and_stops(
    make_cli: MakeCli, pg_server: PostgresServer, busy_database: str, collector: NotifyCollector
) -> None:
    cli = make_cli(pg_server, backup={"jobs": 1})
    # A 2 s watchdog makes the heartbeat beat every second, so a short backup sees several.
    env = {"NOTIFY_SOCKET": str(collector.path), "WATCHDOG_USEC": "2000000"}
    done = cli.run("backup", "--database", busy_database, env=env)
    assert done.returncode == 0, cli.describe(done)
    collector.close()
    statuses = collector.values("STATUS")
    assert any(f"backing up {busy_database}" in s for s in statuses), statuses
    assert any("/s" in s and "iB" in s for s in statuses), statuses
    extends = collector.values("EXTEND_TIMEOUT_USEC")
    assert extends and all(int(v) >= 60_000_000 for v in extends), collector.messages
    assert collector.values("WATCHDOG") and set(collector.values("WATCHDOG")) == {"1"}
    assert collector.messages[-1].get("STOPPING") == "1", collector.messages[-1]


def test_no_notify_socket_means_no_messages(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, collector: NotifyCollector
) -> None:
    cli = make_cli(pg_server)
    done = cli.run("backup", "--database", tiny_db)
    assert done.returncode == 0, cli.describe(done)
    collector.close()
    assert collector.messages == []
