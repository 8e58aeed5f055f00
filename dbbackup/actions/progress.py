"""Progress of long operations: a line on a terminal, ``STATUS=`` under systemd.

Actions report bytes and phases here; how they are shown is decided once,
so logic never prints. Under systemd a heartbeat thread also sends
``EXTEND_TIMEOUT_USEC=`` (and ``WATCHDOG=1`` when the unit has a watchdog)
while the run is alive, so a long backup is not killed by the unit's start
timeout; the run's own deadlines stop anything that hangs.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from dbbackup import notify

HEARTBEAT_SECONDS = 10.0
EXTEND_SECONDS = 300


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


class Progress:
    """Thread-safe byte counter with a phase; quiet unless a renderer is attached."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 0.5) -> None:
        self._lock = threading.Lock()
        self._stream = stream
        self._interval = interval
        self._started = time.monotonic()
        self._last_render = 0.0
        self.phase = ""
        self.bytes = 0
        self._dirty_line = False
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()

    @classmethod
    def for_terminal(cls, enabled: bool = True) -> Progress:
        stream = sys.stderr if enabled and sys.stderr.isatty() else None
        progress = cls(stream)
        if os.environ.get("NOTIFY_SOCKET"):
            progress.start_heartbeat()
        return progress

    def start_heartbeat(self, period: float = HEARTBEAT_SECONDS) -> None:
        """Tell systemd every ``period`` seconds that the run is alive and how far it got."""
        watchdog = notify.watchdog_interval()
        if watchdog is not None:
            period = min(period, watchdog)
        self._heartbeat_stop = threading.Event()

        def beat() -> None:
            # The first beat at once: a run is "progressing" from its first second.
            self._notify_status(extend=True)
            while not self._heartbeat_stop.wait(period):
                self._notify_status(extend=True)

        self._heartbeat = threading.Thread(target=beat, name="sd-notify", daemon=True)
        self._heartbeat.start()

    def _notify_status(self, *, extend: bool) -> None:
        fields: dict[str, object] = {"STATUS": self.status_line()}
        if extend:
            fields["EXTEND_TIMEOUT_USEC"] = EXTEND_SECONDS * 1_000_000
            if notify.watchdog_interval() is not None:
                fields["WATCHDOG"] = 1
        notify.notify(**fields)

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
        self._render(force=True)
        if self._heartbeat is not None:
            self._notify_status(extend=False)

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes += count
        self._render()

    def rate(self) -> float:
        elapsed = max(1e-6, time.monotonic() - self._started)
        return self.bytes / elapsed

    def status_line(self) -> str:
        return f"{self.phase}: {human_bytes(self.bytes)} at {human_bytes(self.rate())}/s"

    def _render(self, force: bool = False) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_render < self._interval:
                return
            self._last_render = now
            line = self.status_line()
            self._stream.write("\r\x1b[K" + line[:200])
            self._stream.flush()
            self._dirty_line = True

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat_stop.set()
            self._heartbeat.join(5.0)
            self._heartbeat = None
            notify.notify(STATUS=f"finished: {self.status_line()}", STOPPING=1)
        if self._stream is not None and self._dirty_line:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
