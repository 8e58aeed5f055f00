"""LOAD DATA LOCAL INFILE that can read only the stream dbbackup hands it.

With LOCAL INFILE the server names the file the client must send, and
PyMySQL opens whatever it is told. A server that is not what it seems could
ask a restore for any file the dbbackup user can read (its keys, other
instances' passwords). Here every load registers the one path it means, a
pipe of its own (``/dev/fd/N``), and any other request is refused before a
byte is read.

PyMySQL has no public hook for this, so the guard wraps the function (newer
releases) or method (older ones) that opens the file; if neither exists,
loading is refused rather than left unguarded.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pymysql
import pymysql.connections

from dbbackup.errors import InternalError

_allowed: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()
_installed = False


class InfileRefused(pymysql.err.OperationalError):
    """The server asked for a file other than the one being loaded."""


def check_request(conn: Any, filename: str | bytes) -> None:
    if isinstance(filename, bytes):
        filename = filename.decode("utf-8", "surrogateescape")
    expected = _allowed.get(conn)
    if expected is None or filename != expected:
        raise InfileRefused(
            0, f"the server asked to read {filename!r}, which is not the stream being restored; refused"
        )


def install() -> None:
    """Wrap PyMySQL's file opening once per process."""
    global _installed
    with _install_lock:
        if _installed:
            return
        module: Any = pymysql.connections
        send_file = getattr(module, "_send_local_file", None)
        loader = getattr(module, "LoadLocalFile", None)
        if callable(send_file):

            def guarded_send(filename: str | bytes, conn: Any) -> Any:
                check_request(conn, filename)
                return send_file(filename, conn)

            module._send_local_file = guarded_send
        elif loader is not None and callable(getattr(loader, "send_data", None)):
            original = loader.send_data

            def guarded_send_data(self: Any) -> Any:
                check_request(self.connection, self.filename)
                return original(self)

            loader.send_data = guarded_send_data
        else:
            raise InternalError(
                f"PyMySQL {pymysql.__version__} has no known LOCAL INFILE entry point to guard; "
                "refusing to load table data through it",
                hint="install a PyMySQL release between 1.0 and 1.2",
            )
        _installed = True


@contextlib.contextmanager
def allow(conn: Any, path: str) -> Iterator[None]:
    """While the block runs, ``conn`` may send ``path`` and nothing else."""
    install()
    _allowed[conn] = path
    try:
        yield
    finally:
        _allowed.pop(conn, None)
