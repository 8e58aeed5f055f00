"""Progress of long operations, for a person at a terminal (and later sd_notify).

Actions report bytes and phases here; how they are shown is decided once,
so logic never prints.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


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

    @classmethod
    def for_terminal(cls, enabled: bool = True) -> Progress:
        stream = sys.stderr if enabled and sys.stderr.isatty() else None
        return cls(stream)

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
        self._render(force=True)

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
        if self._stream is not None and self._dirty_line:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
