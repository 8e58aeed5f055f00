"""Under systemd a backup reports progress, keeps its start timeout alive, and says when it stops.

A real AF_UNIX datagram socket stands in for systemd's NOTIFY_SOCKET.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MakeCli
from harness import PostgresServer
from harness.notify_socket import NotifySocket

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[NotifySocket]:
    found = NotifySocket(str(tmp_path / "notify.sock"))
    yield found
    found.close()


def test_backup_reports_status_extends_timeout_and_stops(
    make_cli: MakeCli, pg_server: PostgresServer, busy_database: str, collector: NotifySocket
) -> None:
    cli = make_cli(pg_server, backup={"jobs": 1})
    # A 2 s watchdog makes the heartbeat beat every second, so a short backup sees several.
    env = {"NOTIFY_SOCKET": collector.address, "WATCHDOG_USEC": "2000000"}
    done = cli.run("backup", "--database", busy_database, env=env)
    assert done.returncode == 0, cli.describe(done)
    messages = collector.drain()
    statuses = [m["STATUS"] for m in messages if "STATUS" in m]
    assert any(f"backing up {busy_database}" in s for s in statuses), statuses
    assert any("/s" in s and "iB" in s for s in statuses), statuses
    extends = [m["EXTEND_TIMEOUT_USEC"] for m in messages if "EXTEND_TIMEOUT_USEC" in m]
    assert extends and all(int(v) >= 60_000_000 for v in extends), messages
    assert {m["WATCHDOG"] for m in messages if "WATCHDOG" in m} == {"1"}
    assert messages[-1].get("STOPPING") == "1", messages[-1]


def test_no_notify_socket_means_no_messages(
    make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str, collector: NotifySocket
) -> None:
    cli = make_cli(pg_server)
    done = cli.run("backup", "--database", tiny_db)
    assert done.returncode == 0, cli.describe(done)
    assert collector.drain() == []
