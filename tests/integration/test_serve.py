"""dbbackup serve and metrics: HTTP endpoints, sd_notify over a real datagram socket, bounded requests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Cli, MakeCli, describe
from harness.notify_socket import NotifySocket
from prometheus_client.parser import text_string_to_metric_families
from test_cleanup import write_set

from dbbackup import notify as sd
from dbbackup.catalog import Catalog
from dbbackup.errors import EX_UNAVAILABLE
from dbbackup.metrics import Target
from dbbackup.server import Handler, ServerState, make_server, run_server
from dbbackup.storage import LocalStorage

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    collector = NotifySocket(str(tmp_path / "notify"))
    yield collector
    collector.close()


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def serving_url(status: str) -> str:
    # STATUS=serving http://127.0.0.1:PORT/ for NAMES
    return status.split()[1]


# -- the sender ------------------------------------------------------------------------------


def test_notify_sends_one_datagram_of_fields(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    assert sd.notify(READY=1, STATUS="line one\nline two")
    assert notify_socket.wait_for("READY", 5) == {"READY": "1", "STATUS": "line one line two"}


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = NotifySocket(f"@dbbackup-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", collector.address)
        assert sd.notify(WATCHDOG=1)
        assert collector.wait_for("WATCHDOG", 5) == {"WATCHDOG": "1"}
    finally:
        collector.close()


def test_notify_outside_systemd_or_to_a_dead_socket_is_a_quiet_no(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd.notify(READY=1) is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sd.notify(READY=1) is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sd.notify(READY=1) is False
    with pytest.raises(ValueError, match="field name"):
        sd.format_message({"A=B": 1})


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert sd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sd.watchdog_interval() is None  # meant for another process
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sd.watchdog_interval() == 30.0
    for bad in ("", "0", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sd.watchdog_interval() is None


# -- dbbackup serve as systemd runs it -------------------------------------------------------


@pytest.fixture
def cli(make_cli: MakeCli) -> Cli:
    made = make_cli(None)
    made.repo.mkdir(mode=0o700)
    return made


def start_serve(cli: Cli, notify_socket: NotifySocket, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = cli.popen(
        "serve",
        "--port",
        "0",
        *args,
        env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "1000000"},
    )
    ready = notify_socket.wait_for("READY", 30)
    assert ready["READY"] == "1"
    return proc, serving_url(ready["STATUS"])


def test_serve_is_ready_answers_pings_the_watchdog_and_stops_cleanly(
    cli: Cli, notify_socket: NotifySocket
) -> None:
    write_set(cli.repo, datetime.now(UTC) - timedelta(hours=2))
    proc, url = start_serve(cli, notify_socket)
    assert get(url + "health") == (200, "ok\n")
    assert get(url + "ready") == (200, "ready\n")
    status, text = get(url + "metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    key = ("dbbackup_backups_total", (("database", "app"), ("instance", "default"), ("result", "success")))
    assert samples[key] == 1.0
    assert samples[("dbbackup_sets", (("instance", "default"),))] == 1.0
    assert get(url + "nothing")[0] == 404
    # WatchdogSec=1s: a ping at least every half second while the loop runs.
    begun = time.monotonic()
    notify_socket.wait_for("WATCHDOG", 3)
    notify_socket.wait_for("WATCHDOG", 3)
    assert time.monotonic() - begun < 3
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert notify_socket.wait_for("STOPPING", 5)["STOPPING"] == "1"


def test_ready_waits_until_the_repository_is_readable(cli: Cli, notify_socket: NotifySocket) -> None:
    cli.repo.rmdir()
    cli.repo.write_text("a file where the repository should be\n")
    proc = cli.popen("serve", "--port", "0", env={"NOTIFY_SOCKET": notify_socket.address})
    waiting = notify_socket.wait_for("STATUS", 20)
    assert waiting["STATUS"].startswith("waiting: default: repository") and "READY" not in waiting
    port = _listening_port(proc)
    url = f"http://127.0.0.1:{port}/"
    assert get(url + "health") == (200, "ok\n")
    status, body = get(url + "ready")
    assert status == 503 and "unreadable" in body
    cli.repo.unlink()
    cli.repo.mkdir(mode=0o700)
    assert notify_socket.wait_for("READY", 20)["READY"] == "1"
    assert get(url + "ready")[0] == 200
    proc.terminate()
    assert proc.wait(timeout=15) == 0


def _listening_port(proc: subprocess.Popen[str]) -> int:
    # Before READY no message names the URL: find the port of the process's listening socket.
    pid = proc.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for port in _listening_ports(pid):
            return port
        time.sleep(0.1)
    raise AssertionError("serve is not listening")


def _listening_ports(pid: int) -> list[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
            ports.append(int(fields[1].split(":")[1], 16))
    return ports


def test_ready_reports_a_broken_configuration_while_metrics_go_on(
    cli: Cli, notify_socket: NotifySocket
) -> None:
    write_set(cli.repo, datetime.now(UTC))
    proc, url = start_serve(cli, notify_socket)
    cli.config.write_text(cli.config.read_text() + "\n[retention]\nkeep_lats = 3\n")
    status, body = get(url + "ready")
    assert status == 503 and 'unknown key "keep_lats"' in body
    status, text = get(url + "metrics")
    assert status == 200 and 'dbbackup_catalog_up{instance="default"} 1.0' in text
    proc.terminate()
    assert proc.wait(timeout=15) == 0


def test_a_taken_port_is_exit_69(cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = cli.run("serve", "--port", str(taken.getsockname()[1]), timeout=30)
    assert done.returncode == EX_UNAVAILABLE, describe(done)
    assert "address is in use" in done.stderr


def test_metrics_command_prints_and_writes_the_textfile(cli: Cli, tmp_path: Path) -> None:
    write_set(cli.repo, datetime.now(UTC) - timedelta(hours=1), databases=("app", "crm"))
    with Catalog.open(cli.repo / "catalog.sqlite") as catalog:
        now = datetime.now(UTC)
        catalog.record_run("default", ["*"], False, now - timedelta(minutes=5), now, "refused")
    printed = cli.ok("metrics").stdout
    assert 'dbbackup_backups_total{database="*",instance="default",result="failure"} 1.0' in printed
    assert 'dbbackup_last_size_bytes{database="crm",instance="default"} 100.0' in printed
    out = tmp_path / "textfile"
    out.mkdir()
    cli.ok("metrics", "--textfile", out)
    written = out / "dbbackup.prom"
    assert written.stat().st_mode & 0o777 == 0o600
    assert without_ages(written.read_text()) == without_ages(printed)
    assert [p.name for p in out.iterdir()] == ["dbbackup.prom"]
    missing = cli.run("metrics", "--textfile", tmp_path / "absent")
    assert missing.returncode == 73, describe(missing)


def without_ages(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("dbbackup_backup_age_seconds{")]


# -- bounded request handling, in process -----------------------------------------------------


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[Callable[..., str]]:
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(load: Callable[[], Sequence[Target]], *, work_timeout: float = 20.0) -> str:
        server = make_server("127.0.0.1", 0, ServerState(load, work_timeout=work_timeout))
        stop = threading.Event()
        thread = threading.Thread(target=run_server, args=(server, stop), daemon=True)
        thread.start()
        stops.append((stop, thread))
        return server.url

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(15)


def test_a_hung_check_turns_into_503_and_health_still_answers(
    in_process: Callable[..., str], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    target = Target("main", repo / "catalog.sqlite", LocalStorage(repo))
    release = threading.Event()

    def hung_configuration() -> Sequence[Target]:
        if threading.current_thread().name.startswith("deadline-readiness"):
            release.wait(30)  # a filesystem that does not answer
        return [target]

    url = in_process(hung_configuration, work_timeout=1.0)
    begun = time.monotonic()
    status, body = get(url + "ready")
    assert status == 503 and "no result within 1s" in body
    assert time.monotonic() - begun < 5
    assert get(url + "health") == (200, "ok\n")
    release.set()


def test_a_silent_client_is_cut_off(
    in_process: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Handler, "timeout", 1.0)
    repo = tmp_path / "repo"
    repo.mkdir()
    url = in_process(lambda: [Target("main", repo / "catalog.sqlite", LocalStorage(repo))])
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as silent:
        silent.sendall(b"GET /health HTTP/1.0\r\n")  # and never finishes the request
        begun = time.monotonic()
        assert get(url + "health") == (200, "ok\n")
        assert silent.recv(1024) == b""  # closed by the server
        assert time.monotonic() - begun < 5
