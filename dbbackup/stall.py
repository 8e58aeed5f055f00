"""Noticing a stream that stopped moving.

A server or proxy that keeps its TCP connection open but sends nothing more
would otherwise hold a backup until the run's deadline, hours later. Data
streams call ``touch()`` as bytes move; when nothing moved for ``timeout``
seconds the guard runs ``on_stall`` once (close the socket, kill the child),
which makes the blocked read fail, and the caller reports the stall.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger("dbbackup.stall")


class StallGuard:
    def __init__(self, timeout: float, on_stall: Callable[[], None], *, what: str) -> None:
        self.timeout = timeout
        self.what = what
        self.stalled = False
        self._on_stall = on_stall
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def touch(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        period = max(0.1, min(1.0, self.timeout / 4))
        while not self._stop.wait(period):
            if time.monotonic() - self._last > self.timeout:
                self.stalled = True
                log.error("%s: nothing moved for %g s; giving up on it", self.what, self.timeout)
                self._on_stall()
                return

    def __enter__(self) -> StallGuard:
        if self.timeout > 0:
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="stall-guard", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
