"""dbbackup serve"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

import click

from dbbackup.cli.check_cmd import load_instances_strict
from dbbackup.cli.state import state
from dbbackup.metrics import Target
from dbbackup.server import ServerState, make_server, run_server

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """A stop request is a clean exit (status 0) for a daemon, not a failure."""

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@click.command()
@click.option("--listen", metavar="ADDRESS", help="Address to listen on (default: server.listen, 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="TCP port (default: server.port, 9187; 0 = any free port)."
)
@click.pass_context
def serve(ctx: click.Context, listen: str | None, port: int | None) -> None:
    """Serve /health, /ready and /metrics (Prometheus) over HTTP for every instance."""
    cli_state = state(ctx)
    settings = cli_state.load(
        {"server.listen": (listen, "--listen"), "server.port": (port, "--port")}
    ).settings

    # Reloaded for every /ready and /metrics: instances added or fixed since the start count.
    def targets() -> Sequence[Target]:
        return [Target.from_settings(s) for s in load_instances_strict(cli_state, setup_logging=False)]

    server_state = ServerState(targets)
    server_state.targets()  # a broken configuration stops the start (exit 78)
    server = make_server(settings.server.listen, settings.server.port, server_state)
    stop = threading.Event()
    with _stop_on_signals(stop):
        run_server(server, stop)
