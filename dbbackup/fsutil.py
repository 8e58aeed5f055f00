"""Crash-safe, race-safe filesystem primitives.

Every file dbbackup creates goes through :func:`atomic_output`: a temp name
opened with ``O_CREAT|O_EXCL|O_NOFOLLOW`` and mode 0600 in the destination
directory, fsynced, renamed over the final name, then the directory fsynced.
A crash leaves either the old file, no file, or a ``.tmp-*`` leftover that is
never mistaken for a finished one.

Directories are created 0700 one component at a time, treating EEXIST as
success (another process won the race) and then checking that what exists is
a real directory owned by us and not writable by group or others.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dbbackup.errors import (
    CannotCreateError,
    DbBackupError,
    IOFailure,
    PermissionDeniedError,
    TemporaryFailure,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
TMP_PREFIX = ".tmp-"
WRITE_PROBE_TIMEOUT = 5.0


def set_private_umask() -> None:
    """Files and directories are private unless explicitly opened up."""
    os.umask(PRIVATE_UMASK)


def os_error_to_failure(exc: OSError, action: str, path: Path | str) -> DbBackupError:
    """Map an OSError to the error class (and exit code) a user can act on."""
    where = f"{action} {path}"
    if exc.errno in (errno.EROFS,):
        return CannotCreateError(
            f"cannot {where}: the filesystem is read-only",
            hint="point the repository at a writable filesystem or remount it read-write",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return CannotCreateError(
            f"cannot {where}: permission denied",
            hint=f"check the owner and mode of the directory (dbbackup runs as uid {os.geteuid()})",
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return IOFailure(
            f"cannot {where}: no space left on device",
            hint="free space, apply the retention policy (dbbackup cleanup) or use another repository",
        )
    if exc.errno == errno.ELOOP:
        return PermissionDeniedError(
            f"refusing to {where}: it is a symbolic link",
            hint="remove the symbolic link; dbbackup never follows links for files it creates",
        )
    return IOFailure(f"cannot {where}: {exc.strerror or exc}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_private_dir(path: Path) -> None:
    """Refuse a directory that another user could tamper with."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise os_error_to_failure(exc, "inspect", path) from exc
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise PermissionDeniedError(
            f"refusing to use {path}: it is {kind}",
            hint="remove it or choose another path; dbbackup only uses real directories",
        )
    euid = os.geteuid()
    if st.st_uid != euid:
        raise PermissionDeniedError(
            f"refusing to use {path}: owned by uid {st.st_uid}, but dbbackup runs as uid {euid}",
            hint=f"chown {euid} {path} (or run dbbackup as its owner)",
        )
    if st.st_mode & 0o022:
        raise PermissionDeniedError(
            f"refusing to use {path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users write to it",
            hint=f"chmod go-w {path} (dbbackup creates its directories 0700)",
        )


def ensure_dir(path: Path, *, check: bool = True) -> Path:
    """Create ``path`` and missing parents 0700, tolerating concurrent creators.

    Only the directories named here are checked for ownership and mode; parents
    that already existed (``/var/lib``, a temp dir) are the system's business.
    """
    path = Path(os.path.abspath(path))
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            pass  # another process created it first; checked below like any existing one
        except OSError as exc:
            raise os_error_to_failure(exc, "create directory", directory) from exc
        else:
            with contextlib.suppress(OSError):
                fsync_dir(directory.parent)
    if check:
        check_private_dir(path)
    return path


def _open_exclusive(directory: Path, stem: str) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(16):
        tmp = directory / f"{TMP_PREFIX}{stem}.{secrets.token_hex(6)}"
        try:
            return os.open(tmp, flags, FILE_MODE), tmp
        except FileExistsError:
            continue  # a name collision or a planted entry: pick another name
        except OSError as exc:
            raise os_error_to_failure(exc, "create a file in", directory) from exc
    raise CannotCreateError(f"cannot create a temporary file in {directory}: names keep colliding")


class _TranslatingWriter(io.BufferedWriter):
    """A buffered file whose write errors say which file and what to do (ENOSPC: exit 74).

    A bare OSError escaping a write would otherwise surface as an internal error.
    """

    def __init__(self, fd: int, path: Path) -> None:
        super().__init__(io.FileIO(fd, "wb"), buffer_size=1 << 20)
        self._target = path

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            raise os_error_to_failure(exc, "write", self._target) from exc

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            raise os_error_to_failure(exc, "write", self._target) from exc


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` atomically; on any exception the destination is untouched."""
    directory = path.parent
    fd, tmp = _open_exclusive(directory, path.name)
    handle = _TranslatingWriter(fd, path)
    try:
        yield handle
        try:
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            raise os_error_to_failure(exc, "write", path) from exc
        handle.close()
        try:
            if path.is_symlink():
                raise PermissionDeniedError(
                    f"refusing to replace {path}: it is a symbolic link",
                    hint="remove the link; dbbackup never writes through links",
                )
            os.rename(tmp, path)
            fsync_dir(directory)
        except OSError as exc:
            raise os_error_to_failure(exc, "rename into", path) from exc
    except BaseException:
        # Closing flushes what is buffered, which fails again on a full disk;
        # the first error is the one to report.
        with contextlib.suppress(OSError, DbBackupError):
            handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    try:
        with atomic_output(path) as handle:
            handle.write(data)
    except OSError as exc:
        raise os_error_to_failure(exc, "write", path) from exc


def open_private_file(path: Path) -> BinaryIO:
    """Create a new 0600 file that must not exist yet (no link following)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        raise os_error_to_failure(exc, "create", path) from exc
    return os.fdopen(fd, "wb")


def open_read_nofollow(path: Path) -> BinaryIO:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error_to_failure(exc, "read", path) from exc
    return os.fdopen(fd, "rb", buffering=1 << 20)


def _probe_once(directory: Path) -> None:
    fd, tmp = _open_exclusive(directory, "write-probe")
    try:
        os.write(fd, b"dbbackup write probe\n")
        os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_probe(directory: Path, *, timeout: float = WRITE_PROBE_TIMEOUT) -> None:
    """Prove ``directory`` takes a durable write, within ``timeout`` seconds.

    The probe runs in a daemon thread so a hung filesystem (dead NFS server,
    frozen device) turns into an error instead of a hang.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            _probe_once(directory)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.append(exc)

    worker = threading.Thread(target=run, name="write-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise CannotCreateError(
            f"cannot write to {directory}: no answer within {timeout:g} s",
            hint="the filesystem seems hung; check the mount (NFS, disk) before retrying",
        )
    error = outcome[0]
    if error is None:
        return
    if isinstance(error, DbBackupError):
        if isinstance(error, IOFailure | CannotCreateError | PermissionDeniedError):
            raise CannotCreateError(f"write probe failed: {error.message}", hint=error.hint) from error
        raise error
    raise error


def runtime_dir() -> Path:
    """A private directory for locks and short-lived secret files.

    ``$RUNTIME_DIRECTORY`` (systemd) first, then ``/run/dbbackup`` when it is
    ours, then ``$XDG_RUNTIME_DIR/dbbackup``, then a per-user directory in the
    system temp dir (created 0700 and checked, so a planted one is refused).
    """
    candidates: list[Path] = []
    if env := os.environ.get("RUNTIME_DIRECTORY"):
        candidates.append(Path(env.split(":")[0]))
    candidates.append(Path("/run/dbbackup"))
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(xdg) / "dbbackup")
    euid = os.geteuid()
    for candidate in candidates:
        try:
            st = os.lstat(candidate)
        except OSError:
            continue
        # Another user's runtime dir (root running by hand next to the dbbackup service) is not ours.
        if stat.S_ISDIR(st.st_mode) and st.st_uid == euid and os.access(candidate, os.W_OK | os.X_OK):
            return ensure_dir(candidate)
    if xdg and os.access(xdg, os.W_OK):
        return ensure_dir(Path(xdg) / "dbbackup")
    return ensure_dir(Path(tempfile.gettempdir()) / f"dbbackup-{os.geteuid()}")


@contextlib.contextmanager
def private_workdir(prefix: str) -> Iterator[Path]:
    """A fresh 0700 directory under the runtime dir, removed afterwards."""
    base = runtime_dir()
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))
    try:
        yield path
    finally:
        for child in path.iterdir():
            with contextlib.suppress(FileNotFoundError):
                child.unlink()
        with contextlib.suppress(OSError):
            path.rmdir()


@contextlib.contextmanager
def file_lock(path: Path, *, wait: float, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; give up after ``wait`` seconds.

    The kernel drops the lock when the process dies, so a crashed run never
    leaves a stale lock behind.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        raise os_error_to_failure(exc, "open lock file", path) from exc
    try:
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TemporaryFailure(
                        f"{what} is locked by another dbbackup process ({path})",
                        hint=f"wait for it to finish, or raise the lock wait (waited {wait:g} s)",
                    ) from None
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 1.0)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
