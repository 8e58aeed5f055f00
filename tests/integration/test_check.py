"""dbbackup check as a Nagios plugin, and webhook alerts against a real local HTTP server."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, MakeCli, describe, run_cli
from harness import PostgresServer
from test_cleanup import write_set

from dbbackup.alerts import build_alert, post_alert, send_failure_alert
from dbbackup.catalog import Catalog
from dbbackup.config import load_config
from dbbackup.errors import ConfigError, ServiceUnavailableError

pytestmark = pytest.mark.timeout(120)

LINE = re.compile(r"^DBBACKUP (OK|WARNING|CRITICAL|UNKNOWN) - .+$")


# -- a webhook receiver ---------------------------------------------------------------------


class Webhook:
    """A local HTTP server answering POSTs from a script of (status, delay) replies."""

    def __init__(self) -> None:
        self.script: list[tuple[int, float]] = []
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                hook.received.append(json.loads(self.rfile.read(length)))
                hook.headers.append(dict(self.headers))
                status, delay = hook.script.pop(0) if hook.script else (200, 0.0)
                time.sleep(delay)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"http://127.0.0.1:{hook.port}/elsewhere")
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1})
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def test_webhook_gets_the_alert_as_json(webhook: Webhook) -> None:
    alert = build_alert(event="backup_overdue", instance="main", summary="late", details={"age_seconds": 5})
    result = post_alert(webhook.url, alert, timeout=5)
    assert result.delivered and result.attempts == 1 and result.status == 200
    [got] = webhook.received
    assert got["event"] == "backup_overdue" and got["instance"] == "main" and got["source"] == "dbbackup"
    assert got["details"] == {"age_seconds": 5} and got["severity"] == "critical"
    assert webhook.headers[0]["Content-Type"] == "application/json"


def test_webhook_is_retried_on_500_with_backoff(webhook: Webhook) -> None:
    webhook.script = [(500, 0.0), (503, 0.0)]
    pauses: list[float] = []
    result = post_alert(webhook.url, {"event": "x"}, timeout=5, backoff=0.01, sleep=pauses.append)
    assert result.delivered and result.attempts == 3
    assert len(webhook.received) == 3
    assert pauses == [0.01, 0.02]


def test_webhook_gives_up_after_the_last_attempt(webhook: Webhook) -> None:
    webhook.script = [(500, 0.0)] * 3
    result = post_alert(webhook.url, {"event": "x"}, timeout=5, backoff=0.0)
    assert not result.delivered and result.attempts == 3 and result.status == 500
    assert "HTTP 500" in result.error


def test_client_errors_and_redirects_are_not_retried(webhook: Webhook) -> None:
    webhook.script = [(404, 0.0), (302, 0.0)]
    first = post_alert(webhook.url, {"event": "x"}, timeout=5, backoff=0.0)
    second = post_alert(webhook.url, {"event": "x"}, timeout=5, backoff=0.0)
    assert (first.attempts, first.status, second.attempts, second.status) == (1, 404, 1, 302)
    assert len(webhook.received) == 2  # the redirect was not followed


def test_a_slow_webhook_times_out_within_the_limit(webhook: Webhook) -> None:
    webhook.script = [(200, 3.0), (200, 3.0)]
    begun = time.monotonic()
    result = post_alert(webhook.url, {"event": "x"}, timeout=0.5, attempts=2, backoff=0.0)
    elapsed = time.monotonic() - begun
    assert not result.delivered and result.attempts == 2
    assert "0.5" in result.error or "timed out" in result.error
    assert elapsed < 2.5


def test_nothing_listening_is_a_retried_connection_error() -> None:
    result = post_alert("http://127.0.0.1:9/hook", {"event": "x"}, timeout=2, attempts=2, backoff=0.0)
    assert not result.delivered and result.attempts == 2 and "cannot connect" in result.error


def test_only_http_urls_are_accepted() -> None:
    for url in ("file:///etc/passwd", "ftp://example.com/x", "https:///nohost"):
        with pytest.raises(ConfigError) as caught:
            post_alert(url, {"event": "x"}, timeout=1)
        assert "/etc/passwd" not in caught.value.message


def test_failure_alert_carries_the_error_and_its_exit_code(webhook: Webhook, tmp_path: Path) -> None:
    config = tmp_path / "alert.toml"
    config.write_text(f'[monitoring]\nalert_webhook = "{webhook.url}"\nalert_timeout = "5s"\n')
    settings = load_config(config_file=config, instance="main", environ={}).settings
    error = ServiceUnavailableError("cannot connect to db:5432", hint="is the server running?")
    result = send_failure_alert(settings, error)
    assert result is not None and result.delivered
    [got] = webhook.received
    assert got["event"] == "backup_failed" and got["instance"] == "main"
    assert got["details"] == {
        "error": "cannot connect to db:5432",
        "hint": "is the server running?",
        "exit_code": 69,
    }
    no_hook = load_config(
        config_file=None, instance=None, environ={"DBBACKUP_CONFIG_DIR": str(tmp_path / "none")}
    )
    assert send_failure_alert(no_hook.settings, "boom") is None


# -- dbbackup check -------------------------------------------------------------------------


def check(cli: Cli, *args: str) -> tuple[int, str]:
    done = cli.run("check", *args, timeout=60)
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]), describe(done)
    return done.returncode, lines[0]


@pytest.fixture
def cli(make_cli: MakeCli) -> Cli:
    made = make_cli(None, monitoring={"max_backup_age": "26h"})
    made.repo.mkdir(mode=0o700)
    return made


def test_fresh_backup_is_ok_with_perfdata(cli: Cli) -> None:
    write_set(cli.repo, datetime.now(UTC) - timedelta(hours=3))
    status, line = check(cli)
    assert status == 0
    assert re.fullmatch(
        r"DBBACKUP OK - default: last backup 3h(\d+min)? ago \| 'default_age'=\d+s;;93600;0;", line
    )


def test_old_backup_is_critical(cli: Cli) -> None:
    write_set(cli.repo, datetime.now(UTC) - timedelta(hours=30))
    status, line = check(cli)
    assert status == 2
    assert "default: last backup 1d6h ago, older than 1d2h" in line
    status, line = check(cli, "--max-age", "2d")
    assert status == 0, line
    status, _line = check(cli, "--max-age", "0")  # no age limit
    assert status == 0


def test_no_backup_at_all_is_critical(cli: Cli) -> None:
    status, line = check(cli)
    assert (status, line) == (2, "DBBACKUP CRITICAL - default: no backup yet (no catalog), limit 1d2h")


def test_a_failed_run_after_the_last_backup_is_a_warning(cli: Cli) -> None:
    write_set(cli.repo, datetime.now(UTC) - timedelta(hours=5))
    now = datetime.now(UTC)
    with Catalog.open(cli.repo / "catalog.sqlite") as catalog:
        # Older than the newest backup: no longer relevant.
        catalog.record_run("default", ["*"], False, now - timedelta(hours=9), now - timedelta(hours=8), "old")
    assert check(cli)[0] == 0
    with Catalog.open(cli.repo / "catalog.sqlite") as catalog:
        catalog.record_run(
            "default", ["*"], False, now - timedelta(hours=2), now - timedelta(hours=1), "refused"
        )
    status, line = check(cli)
    assert status == 1
    assert "a run failed 1h ago: refused" in line


def test_a_failed_verification_is_a_warning(cli: Cli) -> None:
    set_id = write_set(cli.repo, datetime.now(UTC) - timedelta(hours=5))
    with Catalog.open(cli.repo / "catalog.sqlite") as catalog:
        catalog.record_verification(
            set_id,
            instance="default",
            databases=["app"],
            ok=False,
            mode="deep",
            finished_at=datetime.now(UTC),
        )
    status, line = check(cli)
    assert status == 1 and f"verification of {set_id} failed" in line


def test_unreadable_things_are_unknown(cli: Cli) -> None:
    status, line = check(cli, "--max-age", "soon")
    assert status == 3 and line.startswith("DBBACKUP UNKNOWN - --max-age 'soon': not a duration")
    (cli.repo / "catalog.sqlite").write_bytes(b"garbage" * 1000)
    status, line = check(cli)
    assert status == 3 and "cannot read the catalog" in line
    cli.config.write_text("[monitoring]\nmax_backup_age = -1\n")
    status, line = check(cli)
    assert status == 3 and "configuration" in line


def test_every_instance_is_checked_and_the_worst_wins(tmp_path: Path) -> None:
    config_dir = tmp_path / "etc"
    (config_dir / "instances").mkdir(parents=True)
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o700)
    (config_dir / "dbbackup.toml").write_text(f'[storage]\nrepository = "{repo}"\n')
    for name in ("alpha", "beta", "gamma"):
        (config_dir / "instances" / f"{name}.toml").write_text('engine = "postgres"\n')
    write_set(repo, datetime.now(UTC) - timedelta(hours=1), instance="alpha")
    write_set(repo, datetime.now(UTC) - timedelta(days=3), instance="beta")
    done = run_cli("check", "--no-alert", env={"DBBACKUP_CONFIG_DIR": str(config_dir)}, timeout=60)
    assert done.returncode == 2, describe(done)
    line = done.stdout.strip()
    assert line.startswith("DBBACKUP CRITICAL - alpha: last backup 1h ago; beta: last backup 3d ago")
    assert "gamma: no backup yet" in line
    one = run_cli("--instance", "alpha", "check", env={"DBBACKUP_CONFIG_DIR": str(config_dir)}, timeout=60)
    assert one.returncode == 0 and one.stdout.startswith("DBBACKUP OK - alpha:"), describe(one)


def test_overdue_check_posts_an_alert_unless_told_not_to(make_cli: MakeCli, webhook: Webhook) -> None:
    cli = make_cli(None, monitoring={"alert_webhook": webhook.url, "alert_timeout": "5s"})
    cli.repo.mkdir(mode=0o700)
    write_set(cli.repo, datetime.now(UTC) - timedelta(days=2))
    assert check(cli, "--no-alert")[0] == 2
    assert webhook.received == []
    done = cli.run("check", timeout=60)
    assert done.returncode == 2, describe(done)
    [alert] = webhook.received
    assert alert["event"] == "backup_overdue" and alert["instance"] == "default"
    assert alert["summary"].startswith("DBBACKUP CRITICAL - default: last backup 2d ago")
    assert "secret-token" not in done.stderr  # the URL's path may hold a token: never logged
    webhook.script = [(500, 0.0)] * 3
    done = cli.run("check", timeout=60)
    assert done.returncode == 2, "a failed alert does not change the status"
    assert "alert to http://127.0.0.1" in done.stderr and "secret-token" not in done.stderr


def test_a_real_backup_makes_check_ok(make_cli: MakeCli, pg_server: PostgresServer, tiny_db: str) -> None:
    cli = make_cli(pg_server)
    assert check(cli)[0] == 2
    cli.backup("--database", tiny_db)
    status, line = check(cli)
    assert status == 0 and "default: last backup" in line
