"""``dbbackup serve``: /health, /ready and /metrics over HTTP.

``/health``   200 while the server's loop answers at all.
``/ready``    200 when the configuration loads, every instance's repository
              can be listed and its catalog opened; 503 with the problems.
``/metrics``  the Prometheus text exposition (``dbbackup.metrics``).

Everything is bounded: each connection has a socket timeout, at most
``MAX_IN_FLIGHT`` requests are served at once (more get 503 at once), and
the work behind /ready and /metrics runs against a deadline, so a hung
filesystem turns into a 503 instead of a pile of stuck threads.

Under systemd (``Type=notify``) the server sends ``READY=1`` once it listens
and every repository is readable, ``WATCHDOG=1`` from its request loop (so
a wedged loop gets it restarted), and ``STOPPING=1`` on the way out.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

from dbbackup import __version__, metrics
from dbbackup.catalog import Catalog
from dbbackup.errors import (
    ConfigError,
    DbBackupError,
    PermissionDeniedError,
    ServiceUnavailableError,
    TemporaryFailure,
)
from dbbackup.metrics import SizeCache, Target
from dbbackup.notify import notify, watchdog_interval

log = logging.getLogger("dbbackup.server")

_T = TypeVar("_T")

REQUEST_TIMEOUT = 10.0  # socket timeout per connection
WORK_TIMEOUT = 20.0  # deadline for the work behind one /ready or /metrics
MAX_IN_FLIGHT = 8
STARTUP_TIMEOUT = 45.0  # below the unit's TimeoutStartSec=1min
POLL_INTERVAL = 0.5

LoadTargets = Callable[[], Sequence[Target]]


def with_deadline(work: Callable[[], _T], timeout: float, what: str) -> _T:
    """Run ``work`` in a daemon thread; TemporaryFailure if it takes longer than ``timeout``."""
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the waiting thread
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name=f"deadline-{what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise TemporaryFailure(
            f"{what}: no result within {timeout:g}s", hint="check the repository's filesystem"
        )
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


def probe_target(target: Target) -> list[str]:
    """Problems that keep one instance from being served; [] when it is fine."""
    problems = []
    try:
        # Lists the repository's top level; a missing repository is an empty one.
        list(target.storage.children(""))
    except OSError as exc:
        problems.append(
            f"{target.instance}: repository {target.storage.url} unreadable: {exc.strerror or exc}"
        )
    except DbBackupError as exc:
        problems.append(f"{target.instance}: repository {target.storage.url} unreadable: {exc.message}")
    if target.catalog_path.exists():
        try:
            with Catalog.open(target.catalog_path, busy_timeout=metrics.SCRAPE_BUSY_TIMEOUT) as catalog:
                catalog.count(instance=target.instance)
        except DbBackupError as exc:
            problems.append(f"{target.instance}: catalog {target.catalog_path}: {exc.message}")
    return problems


class ServerState:
    """Configuration and caches shared by the request threads."""

    def __init__(self, load_targets: LoadTargets, *, work_timeout: float = WORK_TIMEOUT) -> None:
        self._load_targets = load_targets
        self._last_good: Sequence[Target] = ()
        self._lock = threading.Lock()
        self.work_timeout = work_timeout
        self.sizes = SizeCache()
        self.in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def targets(self) -> Sequence[Target]:
        """The instances as configured now; raises if the configuration is broken."""
        loaded = self._load_targets()
        with self._lock:
            self._last_good = loaded
        return loaded

    def targets_for_metrics(self) -> Sequence[Target]:
        """As configured now, or as last configured correctly: metrics outlive a bad edit."""
        try:
            return self.targets()
        except DbBackupError as exc:
            log.warning("configuration does not load (%s); metrics use the last good one", exc.message)
            with self._lock:
                return self._last_good

    def problems(self) -> list[str]:
        try:
            targets = self.targets()
        except DbBackupError as exc:
            return [f"configuration: {exc.message}"]
        if not targets:
            return ["configuration: no instance configured"]
        return [problem for target in targets for problem in probe_target(target)]

    def ready(self) -> tuple[bool, list[str]]:
        try:
            problems = with_deadline(self.problems, self.work_timeout, "readiness check")
        except DbBackupError as exc:
            problems = [exc.message]
        return not problems, problems

    def metrics_text(self) -> bytes:
        return with_deadline(
            lambda: metrics.render(self.targets_for_metrics(), sizes=self.sizes), self.work_timeout, "metrics"
        )


class Handler(BaseHTTPRequestHandler):
    server: DbBackupHTTPServer
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.0"

    def version_string(self) -> str:
        return f"dbbackup/{__version__}"

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def _dispatch(self, *, send_body: bool) -> None:
        state = self.server.state
        if not state.in_flight.acquire(blocking=False):
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"busy\n", send_body=send_body)
            return
        try:
            self._route(state, send_body=send_body)
        finally:
            state.in_flight.release()

    def _route(self, state: ServerState, *, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._reply(HTTPStatus.OK, b"ok\n", send_body=send_body)
        elif path == "/ready":
            ready, problems = state.ready()
            body = "ready\n" if ready else "not ready\n" + "".join(f"{p}\n" for p in problems)
            self._reply(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, body.encode(), send_body)
        elif path == "/metrics":
            try:
                text = state.metrics_text()
            except DbBackupError as exc:
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, f"{exc.message}\n".encode(), send_body)
                return
            self._reply(HTTPStatus.OK, text, send_body, content_type=metrics.CONTENT_TYPE)
        elif path == "/":
            self._reply(HTTPStatus.OK, b"dbbackup: /health /ready /metrics\n", send_body=send_body)
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found: try /health, /ready or /metrics\n", send_body)

    def _reply(
        self,
        status: HTTPStatus,
        body: bytes,
        send_body: bool,
        *,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class DbBackupHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 32

    def __init__(self, address: tuple[str, int], state: ServerState) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.state = state
        self.watchdog_every = watchdog_interval()
        self._last_ping = 0.0
        super().__init__(address, Handler)

    def service_actions(self) -> None:
        # Called by serve_forever() on every turn of its loop: a stuck loop stops the pings.
        if self.watchdog_every is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_every:
            self._last_ping = now
            notify(WATCHDOG=1)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


def make_server(listen: str, port: int, state: ServerState) -> DbBackupHTTPServer:
    """Bind and listen; errors say what to change."""
    try:
        return DbBackupHTTPServer((listen, port), state)
    except OSError as exc:
        where = f"{listen}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ServiceUnavailableError(
                f"cannot listen on {where}: the address is in use",
                hint="stop the other server or set [server] port to another port",
            ) from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDeniedError(
                f"cannot listen on {where}: permission denied", hint="use a port above 1023"
            ) from exc
        raise ConfigError(
            f"cannot listen on {where}: {exc.strerror or exc}",
            hint="set [server] listen to an address of this host (127.0.0.1, ::1, 0.0.0.0)",
        ) from exc


def run_server(
    server: DbBackupHTTPServer, stop: threading.Event, *, startup_timeout: float = STARTUP_TIMEOUT
) -> None:
    """Serve until ``stop`` is set; READY=1 once every repository is readable.

    ServiceUnavailableError if the repositories do not become readable within
    ``startup_timeout`` seconds (systemd would give up on us anyway).
    """
    loop = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, name="http-loop", daemon=True
    )
    loop.start()
    try:
        _announce_when_ready(server, stop, startup_timeout)
        while not stop.wait(POLL_INTERVAL):
            if not loop.is_alive():
                raise ServiceUnavailableError("the HTTP server loop ended unexpectedly")
    finally:
        notify(STOPPING=1, STATUS="stopping")
        stopper = threading.Thread(target=server.shutdown, name="http-stop", daemon=True)
        stopper.start()
        stopper.join(5 * POLL_INTERVAL + 5)
        server.server_close()
        log.info("stopped serving %s", server.url, extra={"event": "server_stopped"})


def _announce_when_ready(server: DbBackupHTTPServer, stop: threading.Event, startup_timeout: float) -> None:
    deadline = time.monotonic() + startup_timeout
    reported: list[str] = []
    while not stop.is_set():
        ready, problems = server.state.ready()
        if ready:
            names = ", ".join(t.instance for t in server.state.targets_for_metrics())
            status = f"serving {server.url} for {names}"
            notify(READY=1, STATUS=status)
            log.info(status, extra={"event": "server_ready"})
            return
        if problems != reported:
            log.warning("not ready yet: %s", "; ".join(problems))
            notify(STATUS=f"waiting: {problems[0]}")
            reported = problems
        if time.monotonic() >= deadline:
            raise ServiceUnavailableError(
                f"not ready after {startup_timeout:g}s: " + "; ".join(problems),
                hint="check that the repositories exist and are readable by this user",
            )
        stop.wait(1.0)
