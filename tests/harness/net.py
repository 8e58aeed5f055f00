"""Loopback ports and bounded waiting."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now.

    The port is released before the caller binds it, so another process may
    take it in between; servers that fail to bind retry with a new port.
    Ports already handed out in this process are never returned twice, so two
    servers started back to back cannot be given the same one.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        with _handed_out_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free TCP port found on {host}")


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, *, timeout: float) -> None:
    """Block until ``host:port`` accepts connections, at most ``timeout`` seconds."""
    wait_until(
        lambda: port_accepts(host, port),
        timeout=timeout,
        what=f"{host}:{port} to accept connections",
    )
