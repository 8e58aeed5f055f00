"""dbbackup.execute: deadlines, failures with their stderr, secrets kept off argv."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

from dbbackup import credentials, execute
from dbbackup.errors import (
    EX_IOERR,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    InternalError,
    IOFailure,
    PermissionDeniedError,
    ServiceUnavailableError,
)

pytestmark = pytest.mark.timeout(30)

ENV = execute.child_environment()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(autouse=True)
def _no_children_left() -> Iterator[None]:
    yield
    execute.terminate_all(grace=1.0)
    execute.ensure_no_children_left()


@pytest.fixture
def known_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered secret, forgotten again after the test."""
    monkeypatch.setattr(credentials, "_known", set())
    secret = "Unit-Secret-4f1c9e"
    credentials.register(secret)
    return secret


# -- deadlines ------------------------------------------------------------------------------------


def test_deadline_kills_the_child_and_its_children() -> None:
    # The shell reports its background sleep's pid, then waits on it: both must die.
    begun = time.monotonic()
    child = execute.Child(["sh", "-c", "sleep 60 & echo $!; wait"], env=ENV, deadline=0.5, label="sleeper")
    grandchild = int(child.stdout.readline())
    failure = child.wait(timeout=10)
    elapsed = time.monotonic() - begun
    assert failure is not None and failure.timed_out
    assert elapsed < 5
    assert _wait_gone(grandchild, 5), "the deadline left a grandchild running"
    error = execute.failure_to_error("sleeper", failure, "dumping app")
    assert isinstance(error, ServiceUnavailableError)
    assert error.exit_code == EX_UNAVAILABLE
    assert "dumping app: sleeper did not finish before its deadline" in error.message


def test_check_raises_when_the_deadline_passed() -> None:
    with (
        execute.Child(["sleep", "60"], env=ENV, deadline=0.3) as child,
        pytest.raises(ServiceUnavailableError, match="deadline"),
    ):
        child.check(timeout=10, context="waiting")


def test_run_gives_up_after_its_timeout() -> None:
    begun = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=r"no answer within 0\.5 s"):
        execute.run(["sleep", "60"], env=ENV, timeout=0.5, context="probing")
    assert time.monotonic() - begun < 5


def test_terminate_all_stops_running_children() -> None:
    child = execute.Child(["sleep", "60"], env=ENV, deadline=60)
    execute.terminate_all(grace=2.0)
    assert child.proc.poll() is not None
    assert child.wait(timeout=5) is not None


def test_live_children_are_reported() -> None:
    with execute.Child(["sleep", "60"], env=ENV, deadline=60):
        with pytest.raises(InternalError) as caught:
            execute.ensure_no_children_left()
        assert caught.value.exit_code == EX_SOFTWARE


# -- failures carry their stderr ------------------------------------------------------------------

NOISY_FAILURE = (
    "for i in 1 2 3; do echo noise $i >&2; done; echo 'pg_dump: error: the last words' >&2; exit 3"
)


def test_non_zero_exit_raises_with_the_stderr_tail() -> None:
    child = execute.Child(["sh", "-c", NOISY_FAILURE], env=ENV, deadline=10, label="pg_dump")
    with pytest.raises(IOFailure) as caught:
        child.check(timeout=10, context="dumping app")
    assert caught.value.exit_code == EX_IOERR
    assert caught.value.message == "dumping app: pg_dump exited with status 3: pg_dump: error: the last words"
    assert "noise 3" in child.stderr_tail


def test_run_raises_with_the_stderr_tail() -> None:
    with pytest.raises(IOFailure, match="the last words"):
        execute.run(["sh", "-c", NOISY_FAILURE], env=ENV, timeout=10, context="restoring")


def test_success_returns_stdout() -> None:
    out = execute.run(["sh", "-c", "printf 'a\\0b'; echo warning >&2"], env=ENV, timeout=10, context="x")
    assert out == b"a\0b"


def test_killed_child_is_an_io_failure_naming_the_signal() -> None:
    child = execute.Child(["sh", "-c", "kill -KILL $$"], env=ENV, deadline=10, label="psql")
    with pytest.raises(IOFailure, match="psql was killed by SIGKILL"):
        child.check(timeout=10, context="restoring")


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ('FATAL:  password authentication failed for user "app"', PermissionDeniedError),
        ("ERROR:  permission denied for table secrets", PermissionDeniedError),
        ("could not connect to server: Connection refused", ServiceUnavailableError),
        ("server closed the connection unexpectedly", ServiceUnavailableError),
    ],
)
def test_client_messages_choose_the_exit_code(message: str, kind: type[Exception]) -> None:
    script = f"echo {message!r} >&2; exit 1"
    with pytest.raises(kind):
        execute.run(["sh", "-c", script], env=ENV, timeout=10, context="dumping")


def test_a_chatty_child_neither_blocks_nor_grows_the_tail() -> None:
    code = "import sys\nfor i in range(200000): print('line', i, file=sys.stderr)"
    child = execute.Child([sys.executable, "-c", code], env=ENV, deadline=20)
    assert child.wait(timeout=20) is None
    tail = child.stderr_tail.splitlines()
    assert len(tail) == execute.STDERR_TAIL_LINES
    assert tail[-1] == "line 199999"


def test_missing_program_is_unavailable() -> None:
    with pytest.raises(ServiceUnavailableError, match="not installed"):
        execute.Child(["/nonexistent/pg_dump"], env=ENV, deadline=5)


def test_children_get_english_messages() -> None:
    out = execute.run(["sh", "-c", "echo $LC_MESSAGES"], env=ENV, timeout=10, context="x")
    assert out.strip() == b"C"


# -- secrets never on argv -------------------------------------------------------------------------


def test_child_with_a_secret_on_argv_is_refused(known_secret: str, tmp_path: os.PathLike[str]) -> None:
    marker = f"{tmp_path}/started"
    with pytest.raises(InternalError) as caught:
        execute.Child(["sh", "-c", f"touch {marker}", f"--password={known_secret}"], env=ENV, deadline=5)
    assert caught.value.exit_code == EX_SOFTWARE
    assert known_secret not in caught.value.message
    assert not os.path.exists(marker), "the child was started anyway"


def test_run_with_a_secret_on_argv_is_refused(known_secret: str) -> None:
    with pytest.raises(InternalError, match="command line"):
        execute.run(["echo", f"postgresql://app:{known_secret}@db/app"], env=ENV, timeout=5, context="x")


def test_secret_in_the_environment_is_allowed(known_secret: str) -> None:
    out = execute.run(
        ["sh", "-c", 'test "$PGPASSWORD" = "$EXPECTED" && echo ok'],
        env={**ENV, "PGPASSWORD": known_secret, "EXPECTED": known_secret},
        timeout=5,
        context="x",
    )
    assert out.strip() == b"ok"
