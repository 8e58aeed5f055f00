"""Webhook alerts: a JSON document POSTed when a backup is overdue or failed.

``monitoring.alert_webhook`` names an http(s) URL (chat services, alert
managers and ticket systems accept such posts). Delivery is bounded: each
attempt has ``monitoring.alert_timeout`` as a hard deadline, failures that
may pass (connection errors, timeouts, 5xx, 429) are retried a few times with
exponential backoff, and anything else (4xx, redirects) is given up at once.

An alert is a side channel: failing to deliver one is logged, never raised,
so it cannot hide or replace the failure it reports. Webhook URLs often
embed a token, so only their scheme and host ever appear in logs.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from dbbackup import __version__
from dbbackup.errors import ConfigError, DbBackupError

log = logging.getLogger("dbbackup.alerts")

ATTEMPTS = 3
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 10.0
_RESPONSE_READ_LIMIT = 4096
_RETRYABLE_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class AlertResult:
    delivered: bool
    attempts: int
    status: int | None  # HTTP status of the last answer, if any
    error: str  # why the last attempt failed; "" when delivered


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirected POST turns into a GET without the alert; report it as a failure instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def check_webhook_url(url: str) -> str:
    """The URL if it is http(s) with a host; ConfigError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"monitoring.alert_webhook must be an http:// or https:// URL, not {redacted_url(url)!r}",
            hint='e.g. alert_webhook = "https://alerts.example.com/hooks/dbbackup"',
        )
    return url


def redacted_url(url: str) -> str:
    """``scheme://host[:port]``: what of a webhook URL may be shown."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme or '?'}://{host}{port}/..."


def build_alert(
    *, event: str, instance: str, summary: str, details: Mapping[str, object] | None = None
) -> dict[str, object]:
    """The JSON document sent; its field names are a documented, stable interface."""
    return {
        "source": "dbbackup",
        "version": __version__,
        "host": socket.gethostname(),
        "time": datetime.now(UTC).astimezone().isoformat(timespec="seconds"),
        "event": event,
        "severity": "critical",
        "instance": instance,
        "summary": summary,
        "details": dict(details or {}),
    }


def post_alert(
    url: str,
    alert: Mapping[str, object],
    *,
    timeout: float,
    attempts: int = ATTEMPTS,
    backoff: float = FIRST_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
) -> AlertResult:
    """POST ``alert`` as JSON to ``url``; retried, bounded, never raises for delivery problems."""
    check_webhook_url(url)
    body = json.dumps(alert, ensure_ascii=False, sort_keys=True).encode()
    where = redacted_url(url)
    status: int | None = None
    error = ""
    for attempt in range(1, attempts + 1):
        status, error, retry = _attempt(url, body, timeout)
        if not error:
            log.info("alert %s delivered to %s", alert.get("event"), where, extra={"event": "alert_sent"})
            return AlertResult(True, attempt, status, "")
        log.warning("alert to %s failed (attempt %d of %d): %s", where, attempt, attempts, error)
        if not retry or attempt == attempts:
            return AlertResult(False, attempt, status, error)
        sleep(min(backoff * 2 ** (attempt - 1), MAX_BACKOFF))
    return AlertResult(False, attempts, status, error)


def _attempt(url: str, body: bytes, timeout: float) -> tuple[int | None, str, bool]:
    """One POST within ``timeout`` seconds overall: (status, error or "", worth retrying)."""
    outcome: list[tuple[int | None, str, bool]] = []

    def run() -> None:
        outcome.append(_post_once(url, body, timeout))

    # The socket timeout bounds each read, not the whole exchange: a server that
    # trickles bytes is cut off here.
    worker = threading.Thread(target=run, name="alert-post", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return None, f"no answer within {timeout:g}s", True
    return outcome[0]


def _post_once(url: str, body: bytes, timeout: float) -> tuple[int | None, str, bool]:
    # The scheme was checked to be http(s) by check_webhook_url() before any attempt.
    request = urllib.request.Request(  # noqa: S310
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"dbbackup/{__version__}"},
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(_RESPONSE_READ_LIMIT)
            return int(response.status), "", False
    except urllib.error.HTTPError as exc:
        retry = exc.code >= 500 or exc.code in _RETRYABLE_STATUS
        return exc.code, f"HTTP {exc.code} {exc.reason}", retry
    except urllib.error.URLError as exc:
        return None, f"cannot connect: {exc.reason}", True
    except (TimeoutError, OSError) as exc:
        return None, f"{exc.__class__.__name__}: {exc}", True


def send_alert(monitoring: Any, alert: Mapping[str, object]) -> AlertResult | None:
    """Send ``alert`` to the configured webhook; None when none is configured."""
    url = str(monitoring.alert_webhook)
    if not url:
        return None
    try:
        return post_alert(url, alert, timeout=float(monitoring.alert_timeout))
    except ConfigError as exc:
        log.error("alert not sent: %s", exc.message, extra={"event": "alert_failed"})
        return AlertResult(False, 0, None, exc.message)


def send_failure_alert(settings: Any, error: BaseException | str) -> AlertResult | None:
    """Tell the webhook (if configured) that a backup of ``settings.instance`` failed."""
    details: dict[str, object] = {}
    if isinstance(error, DbBackupError):
        message = error.message
        details = {"error": error.message, "hint": error.hint or "", "exit_code": error.exit_code}
    else:
        message = str(error)
        details = {"error": message}
    instance = str(settings.instance)
    alert = build_alert(
        event="backup_failed",
        instance=instance,
        summary=f"dbbackup: backup of instance {instance} failed: {message}",
        details=details,
    )
    return send_alert(settings.monitoring, alert)
