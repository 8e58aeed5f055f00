"""Faults on demand: a connection that breaks, a read-only or a full directory."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .net import LOOPBACK
from .process import reaper, unavailable

POLL_INTERVAL = 0.1
CONNECT_TIMEOUT = 5.0
MAX_CONNECTIONS = 64
DEFAULT_LIFETIME = 600.0
SEND_TIMEOUT = 60.0
CHUNK = 64 * 1024


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: the peer sees a dead network, not a clean end."""
    # OSError: already closed by the peer; close() below is all that is left.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self._finished_pumps = 0
        self._lock = threading.Lock()

    def pump_finished(self) -> bool:
        """Record that one direction ended; True (and closed) when both have."""
        with self._lock:
            self._finished_pumps += 1
            done = self._finished_pumps == 2
        if done:
            self.close()
        return done

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            _reset(self.client)
            if self.upstream is not None:
                _reset(self.upstream)


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 that can break the connection it carries.

    - ``cut_after_bytes=N``: once N bytes in total came from the server (over
      all connections), the client gets exactly those N bytes and then every
      connection is reset -- a truncated stream.
    - ``cut()``: reset every connection now.
    - ``freeze()``: stop forwarding in both directions and accept new clients
      without ever answering them -- a hung server.

    After a cut, new clients are reset at once until ``heal()``; after a freeze
    they hang until ``heal()``. The proxy stops by itself after ``lifetime``
    seconds so a forgotten one cannot outlive its test; ``stop()`` (or the
    ``with`` block) ends it sooner.
    """

    host = LOOPBACK

    def __init__(
        self,
        target_host: str,
        target_port: int,
        cut_after_bytes: int | None = None,
        *,
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        self.target = (target_host, target_port)
        self.cut_after_bytes = cut_after_bytes
        self.bytes_from_server = 0
        self.bytes_from_client = 0
        self.connections = 0
        self._lifetime = lifetime
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._cut = threading.Event()
        self._frozen = threading.Event()
        self._stopped = threading.Event()
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(POLL_INTERVAL)
        self.port = int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop, "accept")

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(
            target=target,
            args=args,
            name=f"CuttingProxy-{self.port}-{name}",
            daemon=True,
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    # -- control ----------------------------------------------------------------

    def cut(self) -> None:
        """Reset every open connection; refuse new ones until ``heal()``."""
        self._cut.set()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        with self._lock:
            # Links held while frozen have no pumps to remove them when closed.
            self._links = [link for link in self._links if link.upstream is not None]

    def freeze(self) -> None:
        """Stop forwarding anything, keeping every socket open."""
        self._frozen.set()

    def heal(self) -> None:
        """Forward new connections normally again (a cut connection stays cut)."""
        self.cut_after_bytes = None
        self._cut.clear()
        self._frozen.clear()

    def stop(self) -> None:
        """Close everything and wait for the proxy's threads; safe to call twice."""
        self._stopped.set()
        self._listener.close()
        with self._lock:
            links = list(self._links)
            threads = list(self._threads)
        for link in links:
            link.close()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- forwarding ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        deadline = time.monotonic() + self._lifetime
        while not self._stopped.is_set():
            if time.monotonic() >= deadline:
                self.stop()
                return
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed by stop()
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        with self._lock:
            too_many = len(self._links) >= MAX_CONNECTIONS
        if too_many or self._cut.is_set():
            _reset(client)
            return
        upstream = None
        if not self._frozen.is_set():
            try:
                upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
            except OSError:
                _reset(client)
                return
        link = _Link(client, upstream)
        with self._lock:
            self._links.append(link)
            self.connections += 1
        if upstream is None:
            # Frozen when it arrived: hold the client until stop() or a cut.
            return
        for sock in (client, upstream):
            # Reads wait in select(); this bounds a send to a peer that stopped reading.
            sock.settimeout(SEND_TIMEOUT)
        self._spawn(self._pump, "up", link, client, upstream, False)
        self._spawn(self._pump, "down", link, upstream, client, True)

    def _allowance(self, size: int) -> int:
        """How much of ``size`` server bytes may still pass; counts them."""
        with self._lock:
            if self.cut_after_bytes is None:
                self.bytes_from_server += size
                return size
            allowed = max(0, min(size, self.cut_after_bytes - self.bytes_from_server))
            self.bytes_from_server += allowed
            return allowed

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket, down: bool) -> None:
        try:
            while not (link.closed.is_set() or self._stopped.is_set()):
                readable, _, _ = select.select([source], [], [], POLL_INTERVAL)
                if not readable or self._frozen.is_set():
                    if self._frozen.is_set():
                        time.sleep(POLL_INTERVAL)
                    continue
                data = source.recv(CHUNK)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                if down:
                    allowed = self._allowance(len(data))
                    if allowed:
                        sink.sendall(data[:allowed])
                    if allowed < len(data):
                        self.cut()
                        return
                else:
                    with self._lock:
                        self.bytes_from_client += len(data)
                    sink.sendall(data)
        except (OSError, ValueError):
            # Either side went away (ValueError: select on a socket already
            # closed by cut()/stop()); the link as a whole is over.
            link.close()
        finally:
            if link.pump_finished():
                with self._lock:
                    if link in self._links:
                        self._links.remove(link)


def _mount_tmpfs(path: Path, options: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"mounting a tmpfs on {path} needs root")
    reaper().register("mount", str(path))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        reaper().unregister("mount", str(path))
        unavailable(f"cannot mount a tmpfs ({options}) on {path}: {done.stderr.strip()}")


def _unmount(path: Path) -> None:
    done = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        # Still busy (a test left a file open): detach now, freed when closed.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=True)
    reaper().unregister("mount", str(path))


@contextmanager
def read_only_dir() -> Iterator[Path]:
    """An empty directory on which every write fails with EROFS or EACCES.

    As root -- who ignores permission bits -- it is a read-only tmpfs mount;
    otherwise a directory with mode 0500.
    """
    path = Path(tempfile.mkdtemp(prefix="dbbackup-ro-"))
    reaper().register("dir", str(path))
    try:
        if os.geteuid() == 0:
            _mount_tmpfs(path, "ro,size=1m,mode=0700")
            try:
                yield path
            finally:
                _unmount(path)
        else:
            path.chmod(0o500)
            try:
                yield path
            finally:
                path.chmod(0o700)
    finally:
        shutil.rmtree(path, ignore_errors=True)
        reaper().unregister("dir", str(path))


@contextmanager
def full_dir(size: str = "2m") -> Iterator[Path]:
    """A directory on a tmpfs of ``size`` (root only): writing more fails with ENOSPC."""
    path = Path(tempfile.mkdtemp(prefix="dbbackup-full-"))
    reaper().register("dir", str(path))
    try:
        _mount_tmpfs(path, f"size={size},mode=0700")
        try:
            yield path
        finally:
            _unmount(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
        reaper().unregister("dir", str(path))
