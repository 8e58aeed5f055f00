"""Running server processes as the right user, and always cleaning up after them.

PostgreSQL refuses to run as root and MariaDB wants an unprivileged account, so
when the tests run as root (CI) servers run as the distribution's service user
(``postgres`` / ``mysql``) with their files in a fresh private directory
chowned to it; as an ordinary user they simply run as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn, Self

REQUIRE_ENV = "DBBACKUP_TEST_REQUIRE_SERVERS"
SYSTEM_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


class HarnessError(RuntimeError):
    """A test server could not be set up or torn down."""


def servers_required() -> bool:
    """CI sets the variable: a missing server there is a broken image, not a skip."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing prerequisite, or fail it when servers are required."""
    # Imported here: `make demo` runs the harness servers without the test extra.
    import pytest

    if servers_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, package: str, search_dirs: Sequence[str | Path] = ()) -> Path:
    """Path of executable ``name``; skip (or fail under the REQUIRE variable) if absent."""
    dirs = [str(d) for d in search_dirs]
    dirs += os.environ.get("PATH", "").split(os.pathsep)
    dirs += SYSTEM_BIN_DIRS
    found = shutil.which(name, path=os.pathsep.join(d for d in dirs if d))
    if found is None:
        unavailable(f"{name} not installed: apt-get install {package}")
    return Path(found)


@dataclass(frozen=True)
class Account:
    """The user a server process runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()


def server_account(service_user: str, package: str) -> Account:
    """``service_user`` when running as root, otherwise the current user."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
    else:
        try:
            entry = pwd.getpwnam(service_user)
        except KeyError:
            unavailable(f"system user {service_user!r} missing: apt-get install {package}")
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def server_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for server binaries.

    The test process may carry PGDATA, PGPORT, MYSQL_HOST and friends meant for
    the code under test; none of that may leak into the servers' own tools.
    """
    path = os.pathsep.join([*SYSTEM_BIN_DIRS, os.environ.get("PATH", "")])
    env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    env.update(extra or {})
    return env


def make_private_dir(prefix: str, owner: Account) -> Path:
    """A fresh 0700 temporary directory owned by ``owner``, reaped if the session dies."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    reaper().register("dir", str(path))
    if not owner.is_self:
        os.chown(path, owner.uid, owner.gid)
    return path


def make_owned_dir(path: Path, owner: Account, mode: int = 0o700) -> Path:
    """Create directory ``path`` (must not exist) owned by ``owner``."""
    path.mkdir(mode=mode)
    if not owner.is_self:
        os.chown(path, owner.uid, owner.gid)
    return path


def remove_private_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    reaper().unregister("dir", str(path))


def write_private_file(path: Path, text: str, owner: Account | None = None) -> Path:
    """Create ``path`` exclusively with mode 0600 (never follows a planted link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    if owner is not None and not owner.is_self:
        os.chown(path, owner.uid, owner.gid)
    return path


def _identity(account: Account) -> tuple[int | None, int | None, list[int] | None]:
    """(user, group, extra_groups) for Popen: None keeps the current identity."""
    if account.is_self:
        return None, None, None
    return account.uid, account.gid, list(account.groups)


def run(
    argv: Sequence[str | Path],
    *,
    account: Account,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
) -> str:
    """Run a short-lived server tool as ``account``; its combined output on success."""
    cmd = [str(arg) for arg in argv]
    user, group, extra_groups = _identity(account)
    try:
        done = subprocess.run(
            cmd,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            user=user,
            group=group,
            extra_groups=extra_groups,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{cmd[0]} did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-4000:]}")
    return done.stdout


def spawn(
    argv: Sequence[str | Path],
    *,
    account: Account,
    env: Mapping[str, str],
    cwd: Path,
    log: IO[bytes],
) -> subprocess.Popen[bytes]:
    """Start a long-running server in its own process group, output to ``log``."""
    user, group, extra_groups = _identity(account)
    proc = subprocess.Popen(
        [str(arg) for arg in argv],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        user=user,
        group=group,
        extra_groups=extra_groups,
    )
    reaper().register("group", f"{proc.pid} {Path(str(argv[0])).name[:15]}")
    return proc


def kill_group(pgid: int) -> None:
    """SIGKILL every process in group ``pgid``; a group already gone is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid`` from /proc, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[1])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (its parent may never reap it)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children first found first)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                parents.setdefault(stat[1], []).append(int(entry))
    found: list[int] = []
    queue = [pid]
    while queue:
        children = parents.get(queue.pop(), [])
        found += children
        queue += children
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant, even ones in other sessions.

    The process is stopped first so it cannot fork while its tree is read.
    """
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return
    for victim in [*descendants(pid), pid]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            continue


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit; True if it did."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send ``sig``, wait up to ``timeout`` s, then SIGKILL the whole group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"{proc.args!r} ignored signal {sig}; killing", file=sys.stderr)
    # Also catches helpers that outlived the main process.
    kill_group(proc.pid)
    proc.wait(timeout=30)
    reaper().unregister("group", str(proc.pid))


def log_tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


class Reaper:
    """Client side of ``reaper.py``: tells the watchdog what to clean up."""

    def __init__(self) -> None:
        script = Path(__file__).with_name("reaper.py")
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-I", str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def _send(self, line: str) -> None:
        stdin = self._proc.stdin
        if stdin is None:
            raise HarnessError("reaper process has no stdin")
        with self._lock:
            stdin.write(line + "\n")
            stdin.flush()

    def register(self, kind: str, value: str) -> None:
        self._send(f"{kind} {value}")

    def unregister(self, kind: str, value: str) -> None:
        self._send(f"un{kind} {value}")


_reaper: Reaper | None = None
_reaper_lock = threading.Lock()


def reaper() -> Reaper:
    """The session's single watchdog, started on first use."""
    global _reaper
    with _reaper_lock:
        if _reaper is None:
            _reaper = Reaper()
        return _reaper


class ManagedServer:
    """A throwaway server: ``start()``/``stop()``, usable as ``with server:``.

    ``base_dir`` holds all its files while it runs; ``_base()`` is that
    directory, or an error naming the server when it was never started.
    """

    label = "server"
    base_dir: Path | None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _base(self) -> Path:
        if self.base_dir is None:
            raise HarnessError(f"{self.label} was not started")
        return self.base_dir

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
