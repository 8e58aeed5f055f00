"""dbbackup.fsutil: private directories under races, atomic files, the write probe, locks."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbbackup import fsutil
from dbbackup.errors import (
    EX_CANTCREAT,
    EX_IOERR,
    EX_NOPERM,
    CannotCreateError,
    DbBackupError,
    IOFailure,
    PermissionDeniedError,
    TemporaryFailure,
)

pytestmark = pytest.mark.timeout(30)

NOBODY_UID = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _temp_leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(fsutil.TMP_PREFIX)]


@pytest.fixture
def umask_000() -> Iterator[None]:
    """Run the test with the most permissive umask a caller could hand us."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- ensure_dir -----------------------------------------------------------------------------------


def test_ensure_dir_creates_every_missing_level_private(tmp_path: Path, umask_000: None) -> None:
    target = tmp_path / "a" / "b" / "c"
    assert fsutil.ensure_dir(target) == target
    for level in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert _mode(level) == 0o700, level


def test_ensure_dir_tolerates_concurrent_creators(tmp_path: Path) -> None:
    target = tmp_path / "x" / "y" / "z" / "repo"
    workers = 32
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def create() -> None:
        start.wait(10)
        try:
            fsutil.ensure_dir(target)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert target.is_dir() and _mode(target) == 0o700


def test_ensure_dir_checks_an_existing_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionDeniedError):
        fsutil.ensure_dir(shared)
    assert fsutil.ensure_dir(shared, check=False) == shared


# -- check_private_dir -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755, 0o500])
def test_check_private_dir_accepts_directories_only_we_can_write(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "ok"
    directory.mkdir()
    directory.chmod(mode)
    fsutil.check_private_dir(directory)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o720])
def test_check_private_dir_refuses_writable_by_others(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(PermissionDeniedError) as caught:
        fsutil.check_private_dir(directory)
    assert caught.value.exit_code == EX_NOPERM
    assert f"{mode:04o}" in caught.value.message
    assert caught.value.hint and "chmod go-w" in caught.value.hint


def test_check_private_dir_refuses_a_symlink_to_a_good_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(PermissionDeniedError, match="symbolic link"):
        fsutil.check_private_dir(link)


def test_check_private_dir_refuses_a_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    with pytest.raises(PermissionDeniedError, match="not a directory"):
        fsutil.check_private_dir(plain)


def test_check_private_dir_refuses_another_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory away needs root")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY_UID, NOBODY_UID)
    with pytest.raises(PermissionDeniedError, match=f"owned by uid {NOBODY_UID}"):
        fsutil.check_private_dir(foreign)


def test_check_private_dir_of_a_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(DbBackupError) as caught:
        fsutil.check_private_dir(tmp_path / "missing")
    assert str(tmp_path / "missing") in caught.value.message


# -- atomic_output --------------------------------------------------------------------------------


def test_atomic_output_writes_a_private_file(tmp_path: Path, umask_000: None) -> None:
    target = tmp_path / "manifest.json"
    with fsutil.atomic_output(target) as handle:
        handle.write(b"complete")
    assert target.read_bytes() == b"complete"
    assert _mode(target) == 0o600
    assert _temp_leftovers(tmp_path) == []


def test_atomic_output_leaves_nothing_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "object"
    with pytest.raises(RuntimeError, match="producer died"), fsutil.atomic_output(target) as handle:
        handle.write(b"x" * (3 << 20))  # more than the buffer: some bytes reached the file
        raise RuntimeError("producer died")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_the_old_file_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "catalog"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), fsutil.atomic_output(target) as handle:
        handle.write(b"new, half written")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert _temp_leftovers(tmp_path) == []


def test_atomic_output_does_not_replace_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "manifest.json"
    link.symlink_to(victim)
    with pytest.raises(PermissionDeniedError, match="symbolic link"), fsutil.atomic_output(link) as handle:
        handle.write(b"attacker's choice")
    assert victim.read_bytes() == b"precious"
    assert link.is_symlink()
    assert _temp_leftovers(tmp_path) == []


def test_atomic_output_on_a_full_disk_is_an_io_error(full_dir: Path) -> None:
    target = full_dir / "object"
    with pytest.raises(IOFailure) as caught, fsutil.atomic_output(target) as handle:
        for _ in range(8):
            handle.write(b"\0" * (1 << 20))
    assert caught.value.exit_code == EX_IOERR
    assert "no space left" in caught.value.message
    assert str(target) in caught.value.message
    assert list(full_dir.iterdir()) == []


def test_open_private_file_refuses_an_existing_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "pgpass"
    link.symlink_to(victim)
    for path in (victim, link):
        with pytest.raises(DbBackupError):
            fsutil.open_private_file(path)
    assert victim.read_bytes() == b"precious"


def test_open_read_nofollow_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(b"data")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(PermissionDeniedError, match="symbolic link"):
        fsutil.open_read_nofollow(link)
    with fsutil.open_read_nofollow(real) as handle:
        assert handle.read() == b"data"


@pytest.mark.parametrize(
    ("code", "kind", "exit_code"),
    [
        (errno.EROFS, CannotCreateError, EX_CANTCREAT),
        (errno.EACCES, CannotCreateError, EX_CANTCREAT),
        (errno.ENOSPC, IOFailure, EX_IOERR),
        (errno.EDQUOT, IOFailure, EX_IOERR),
        (errno.ELOOP, PermissionDeniedError, EX_NOPERM),
        (errno.EIO, IOFailure, EX_IOERR),
    ],
)
def test_os_errors_map_to_exit_codes(code: int, kind: type[DbBackupError], exit_code: int) -> None:
    error = fsutil.os_error_to_failure(OSError(code, os.strerror(code)), "write", "/repo/x")
    assert type(error) is kind
    assert error.exit_code == exit_code
    assert "/repo/x" in error.message


# -- write_probe ----------------------------------------------------------------------------------


def test_write_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    fsutil.write_probe(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_write_probe_on_a_read_only_directory_is_cannot_create(readonly_dir: Path) -> None:
    begun = time.monotonic()
    with pytest.raises(CannotCreateError) as caught:
        fsutil.write_probe(readonly_dir)
    assert time.monotonic() - begun < 5
    assert str(readonly_dir) in caught.value.message


def test_write_probe_gives_up_on_a_hung_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A write that never returns, as on a dead NFS server: the probe thread blocks.
    release = threading.Event()
    entered = threading.Event()

    def hang(directory: Path) -> None:
        entered.set()
        release.wait(30)

    monkeypatch.setattr(fsutil, "_probe_once", hang)
    begun = time.monotonic()
    try:
        with pytest.raises(CannotCreateError, match=r"no answer within 0\.3 s") as caught:
            fsutil.write_probe(tmp_path, timeout=0.3)
    finally:
        release.set()
    assert entered.is_set()
    assert time.monotonic() - begun < 3
    assert caught.value.hint and "hung" in caught.value.hint


# -- locks and work directories --------------------------------------------------------------------


def test_file_lock_held_elsewhere_is_a_temporary_failure(tmp_path: Path) -> None:
    lock = tmp_path / "backup.lock"
    with fsutil.file_lock(lock, wait=1, what="instance main"):
        assert lock.read_text().strip() == str(os.getpid())
        begun = time.monotonic()
        with (
            pytest.raises(TemporaryFailure, match="instance main is locked"),
            fsutil.file_lock(lock, wait=0.3, what="instance main"),
        ):
            pass
        assert 0.25 < time.monotonic() - begun < 3
    # Released: the next holder gets it at once.
    with fsutil.file_lock(lock, wait=0, what="instance main"):
        pass
    assert _mode(lock) == 0o600


def test_private_workdir_is_private_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime))
    with fsutil.private_workdir("run") as work:
        assert work.parent == runtime
        assert _mode(work) == 0o700
        (work / "pgpass").write_bytes(b"secret")
    assert not work.exists()
    assert list(runtime.iterdir()) == []
