"""sd_notify: tell systemd about readiness, progress and liveness.

The one sender of notification messages in dbbackup. Outside systemd
(``$NOTIFY_SOCKET`` unset) every call is a cheap no-op, so callers never
need to check whether they run under a service manager.

    notify(READY=1, STATUS="listening on 127.0.0.1:9187")
    notify(STATUS="main: 1.2 GiB, 85 MiB/s", EXTEND_TIMEOUT_USEC=60_000_000)
    notify(STOPPING=1)

The protocol is one datagram of ``KEY=value`` lines to the ``AF_UNIX`` socket
named by ``$NOTIFY_SOCKET``; a leading ``@`` names an abstract socket. A lost
notification must never fail a backup, so send errors are logged, not raised.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("dbbackup.notify")

SEND_TIMEOUT = 2.0


def _socket_address() -> str | bytes | None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return None
    if address.startswith("@"):
        # Abstract namespace: the kernel expects a leading NUL byte.
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    # Other schemes (vsock:...) are for VMs and containers we do not target.
    log.debug("ignoring unsupported NOTIFY_SOCKET address %r", address)
    return None


def format_message(fields: dict[str, object]) -> bytes:
    """``KEY=value`` lines; newlines in values would start a bogus field, so they are flattened."""
    lines = []
    for key, value in fields.items():
        if not key or "=" in key or "\n" in key:
            raise ValueError(f"invalid sd_notify field name {key!r}")
        text = str(value).replace("\n", " ")
        lines.append(f"{key}={text}")
    return ("\n".join(lines) + "\n").encode()


def notify(**fields: object) -> bool:
    """Send ``fields`` to systemd; True if a message was delivered.

    Returns False (without raising) when not under systemd or when the send
    failed, e.g. because the service manager went away.
    """
    if not fields:
        return False
    address = _socket_address()
    if address is None:
        return False
    message = format_message(fields)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None when not enabled.

    systemd sets ``$WATCHDOG_PID`` to the process it watches; when it names
    another process (we are a child of the service), the watchdog is not ours.
    """
    usec_text = os.environ.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    pid_text = os.environ.get("WATCHDOG_PID", "")
    if pid_text and pid_text != str(os.getpid()):
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.debug("ignoring malformed WATCHDOG_USEC=%r", usec_text)
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000
