"""A stand-in for systemd's notification socket (``NOTIFY_SOCKET``).

A real AF_UNIX datagram socket (a path, or an abstract ``@name``) that parses
every sd_notify message into a dict, for tests of READY/STATUS/WATCHDOG.
"""

from __future__ import annotations

import queue
import socket
import threading
import time


class NotifySocket:
    """A datagram socket standing in for systemd's; every message is parsed into a dict."""

    def __init__(self, address: str) -> None:
        self.address = address  # what goes into NOTIFY_SOCKET
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.2)
        self.messages: queue.Queue[dict[str, str]] = queue.Queue()
        self.seen: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.put(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait_for(self, key: str, timeout: float = 20.0) -> dict[str, str]:
        """The next message carrying ``key``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(message)
            if key in message:
                return message
        raise AssertionError(f"no {key}= within {timeout}s; got {self.seen}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def drain(self, quiet_for: float = 0.5) -> list[dict[str, str]]:
        """Every message not yet taken, once none has arrived for ``quiet_for`` seconds."""
        while True:
            try:
                self.seen.append(self.messages.get(timeout=quiet_for))
            except queue.Empty:
                return list(self.seen)
