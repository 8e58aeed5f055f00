"""The one place that starts child processes.

Every child gets: an argv that is checked to hold no known secret, an
explicit environment, a deadline after which it is killed, its stderr read by
a thread into a bounded tail (so a chatty child can neither block on a full
pipe nor grow our memory), and registration so that a dying dbbackup takes
its children with it. Any child that exits non-zero fails the run.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from dbbackup import credentials
from dbbackup.errors import DbBackupError, InternalError, IOFailure, ServiceUnavailableError

log = logging.getLogger("dbbackup.execute")

STDERR_TAIL_LINES = 40
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL

_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def terminate_all(grace: float = 5.0) -> None:
    """Stop every child still running (called on SIGTERM and at exit)."""
    with _live_lock:
        children = list(_live)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(1.0)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Error classification reads the client tools' messages in English.
    env["LC_MESSAGES"] = "C"
    if extra:
        env.update(extra)
    return env


@dataclass
class ChildFailure:
    returncode: int
    stderr_tail: str
    timed_out: bool


class Child:
    """A running child process with a deadline and a captured stderr tail."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        deadline: float,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
        label: str | None = None,
    ) -> None:
        credentials.assert_not_in_argv(argv)
        self.argv = list(argv)
        self.label = label or os.path.basename(argv[0])
        self.timed_out = False
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        log.debug("starting %s", " ".join(self.argv))
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=dict(env),
                close_fds=True,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise ServiceUnavailableError(
                f"{argv[0]} is not installed or not on PATH",
                hint="install the database client tools (postgresql-client / mariadb-client)",
            ) from exc
        with _live_lock:
            _live.add(self.proc)
        self._stderr_reader = threading.Thread(
            target=self._read_stderr, name=f"stderr-{self.label}", daemon=True
        )
        self._stderr_reader.start()
        self._timer = threading.Timer(max(0.0, deadline), self._expire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def stdout(self) -> io.BufferedReader:
        # Popen wraps a pipe in a BufferedReader; read1() returns whatever is ready.
        assert isinstance(self.proc.stdout, io.BufferedReader)
        return self.proc.stdout

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._tail.append(line)
                log.debug("%s: %s", self.label, line)

    def _expire(self) -> None:
        if self.proc.poll() is None:
            self.timed_out = True
            log.error("%s exceeded its deadline; killing it", self.label)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._tail)

    def wait(self, timeout: float = 60.0) -> ChildFailure | None:
        """Wait for exit; ``None`` when it succeeded, else what went wrong."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.kill()
            code = self.proc.wait(10.0)
        finally:
            self._timer.cancel()
            with _live_lock:
                _live.discard(self.proc)
        self._stderr_reader.join(5.0)
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if code == 0 and not self.timed_out:
            return None
        return ChildFailure(code, self.stderr_tail, self.timed_out)

    def check(self, timeout: float = 60.0, *, context: str) -> None:
        failure = self.wait(timeout)
        if failure is not None:
            raise failure_to_error(self.label, failure, context)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        with contextlib.suppress(DbBackupError, subprocess.TimeoutExpired):
            self.wait(10.0)


def failure_to_error(label: str, failure: ChildFailure, context: str) -> DbBackupError:
    tail = failure.stderr_tail.strip()
    detail = f": {tail.splitlines()[-1]}" if tail else ""
    if failure.timed_out:
        return ServiceUnavailableError(
            f"{context}: {label} did not finish before its deadline and was killed",
            hint="raise the timeout in the configuration or check the server for blocking locks",
        )
    if failure.returncode < 0:
        sig = signal.Signals(-failure.returncode).name
        return IOFailure(f"{context}: {label} was killed by {sig}{detail}")
    classified = credentials.classify_client_error(tail)
    if classified is not None:
        return classified(f"{context}: {label} failed{detail}")
    return IOFailure(f"{context}: {label} exited with status {failure.returncode}{detail}")


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    context: str,
    input_bytes: bytes | None = None,
) -> bytes:
    """Run a short command to completion and return its stdout."""
    return run_capture(argv, env=env, timeout=timeout, context=context, input_bytes=input_bytes)[0]


def run_capture(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    context: str,
    input_bytes: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Run a short command to completion; return its stdout and stderr."""
    credentials.assert_not_in_argv(argv)
    log.debug("running %s", " ".join(argv))
    try:
        done = subprocess.run(
            list(argv),
            input=input_bytes,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
            capture_output=True,
            env=dict(env),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ServiceUnavailableError(f"{argv[0]} is not installed or not on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailableError(
            f"{context}: {os.path.basename(argv[0])} gave no answer within {timeout:g} s"
        ) from exc
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace")
        failure = ChildFailure(done.returncode, "\n".join(tail.splitlines()[-STDERR_TAIL_LINES:]), False)
        raise failure_to_error(os.path.basename(argv[0]), failure, context)
    return done.stdout, done.stderr


def require_success(children: Sequence[Child], *, context: str, timeout: float = 60.0) -> None:
    """Wait for all children; the first failure (if any) becomes the error."""
    first: DbBackupError | None = None
    for child in children:
        failure = child.wait(timeout)
        if failure is not None and first is None:
            first = failure_to_error(child.label, failure, context)
    if first is not None:
        raise first


def ensure_no_children_left() -> None:
    with _live_lock:
        if _live:
            raise InternalError(f"{len(_live)} child process(es) still running at exit")
