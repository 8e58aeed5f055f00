"""A stand-in for journald: a datagram socket where libsystemd sends journal entries.

No journald runs on the test machines (PID 1 is not systemd), so a test
running as root can bind the well-known socket path itself and read exactly
what dbbackup sends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .process import unavailable

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


def parse_native(datagram: bytes) -> dict[str, str]:
    """Decode journald's native protocol: KEY=VALUE lines or KEY\\n<le64 size><data>\\n."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(datagram):
        end = datagram.index(b"\n", pos)
        line = datagram[pos:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            pos = end + 1
        else:
            key = line
            size = int.from_bytes(datagram[end + 1 : end + 9], "little")
            value = datagram[end + 9 : end + 9 + size]
            if datagram[end + 9 + size : end + 10 + size] != b"\n":
                raise ValueError("malformed binary-safe journal field")
            pos = end + 10 + size
        fields[key.decode()] = value.decode()
    return fields


@contextlib.contextmanager
def fake_journal() -> Iterator[socket.socket]:
    """Bind the journal socket (root only, and only where no journald owns it)."""
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        unavailable("systemd-python is not installed (needs libsystemd-dev and pkg-config to build)")
    if os.geteuid() != 0:
        unavailable("binding /run/systemd/journal/socket needs root")
    if JOURNAL_SOCKET.exists():
        unavailable(f"{JOURNAL_SOCKET} exists (a real journald?); not touching it")
    made_dir = not JOURNAL_SOCKET.parent.exists()
    JOURNAL_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(JOURNAL_SOCKET))
    except OSError as exc:
        sock.close()
        unavailable(f"cannot bind {JOURNAL_SOCKET}: {exc}")
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()
        JOURNAL_SOCKET.unlink()
        if made_dir:
            try:
                JOURNAL_SOCKET.parent.rmdir()
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.ENOENT):
                    raise


def drain(sock: socket.socket, *, quiet_for: float = 1.0) -> list[dict[str, str]]:
    """Every entry received until the socket has been quiet for ``quiet_for`` seconds."""
    entries = []
    sock.settimeout(quiet_for)
    while True:
        try:
            entries.append(parse_native(sock.recv(1 << 20)))
        except TimeoutError:
            return entries
