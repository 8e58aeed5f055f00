"""packaging/logrotate/dbbackup, run by the real logrotate.

The shipped file names /var/log/dbbackup and the `dbbackup` user, which a
test machine need not have. The tests rewrite exactly those: the log
directory to a temp dir and the `su`/`create` owner to the current user and
group; every other directive is used as shipped.
"""

from __future__ import annotations

import grp
import gzip
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "packaging" / "logrotate" / "dbbackup"
LOG_DIR = "/var/log/dbbackup"


def need_logrotate() -> str:
    path = shutil.which("logrotate") or (
        "/usr/sbin/logrotate" if os.access("/usr/sbin/logrotate", os.X_OK) else None
    )
    if path is None:
        if os.environ.get("DBBACKUP_TEST_REQUIRE_SERVERS") == "1":
            pytest.fail("logrotate is required (DBBACKUP_TEST_REQUIRE_SERVERS=1) but missing")
        pytest.skip("logrotate not installed")
    return path


def directives() -> list[str]:
    text = CONFIG.read_text(encoding="utf-8")
    body = text[text.index("{") + 1 : text.rindex("}")]
    return [line.strip() for line in body.splitlines() if line.strip()]


def rewritten_config(tmp_path: Path) -> tuple[Path, Path]:
    """(config, log dir): the shipped config aimed at tmp_path, owned by us."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    log_dir = tmp_path / "log"
    log_dir.mkdir(mode=0o700)
    text = CONFIG.read_text(encoding="utf-8")
    assert text.count(f"{LOG_DIR}/") == 1
    assert text.count("dbbackup dbbackup") == 2
    text = text.replace(f"{LOG_DIR}/", f"{log_dir}/").replace("dbbackup dbbackup", f"{user} {group}")
    config = tmp_path / "logrotate.conf"
    config.write_text(text, encoding="utf-8")
    # logrotate refuses a config that others may write to.
    config.chmod(0o644)
    return config, log_dir


def logrotate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_logrotate(), *args],
        env={**os.environ, "LC_ALL": "C"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_log(path: Path, text: str) -> None:
    # As dbbackup does: a 0600 file, appended to.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def test_shipped_directives() -> None:
    lines = directives()
    assert "su dbbackup dbbackup" in lines
    assert "create 0600 dbbackup dbbackup" in lines
    for word in ("compress", "delaycompress", "missingok", "notifempty", "weekly"):
        assert word in lines
    rotate = [line for line in lines if line.startswith("rotate ")]
    assert rotate and 4 <= int(rotate[0].split()[1]) <= 52
    # dbbackup reopens its log file itself: no signal, no copytruncate.
    assert not [line for line in lines if "postrotate" in line or "copytruncate" in line]
    lines = CONFIG.read_text(encoding="utf-8").splitlines()
    assert [line for line in lines if line.endswith("{")] == [f"{LOG_DIR}/*.log {{"]


@pytest.mark.timeout(60)
def test_debug_run_parses_cleanly(tmp_path: Path) -> None:
    config, log_dir = rewritten_config(tmp_path)
    write_log(log_dir / "dbbackup.log", "one line\n")
    result = logrotate("-d", "-s", str(tmp_path / "state"), str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower()
    assert f"rotating pattern: {log_dir}/*.log" in output
    assert "weekly (8 rotations)" in output
    assert "log files >= 104857600 are rotated earlier" in output
    assert "empty log files are not rotated" in output
    # -d changes nothing.
    assert sorted(p.name for p in log_dir.iterdir()) == ["dbbackup.log"]


@pytest.mark.timeout(60)
def test_forced_rotation_compresses_one_cycle_late_and_keeps_0600(tmp_path: Path) -> None:
    config, log_dir = rewritten_config(tmp_path)
    state = str(tmp_path / "state")
    log = log_dir / "dbbackup.log"

    write_log(log, "first week\n")
    result = logrotate("-f", "-s", state, str(config))
    assert result.returncode == 0, result.stderr
    # delaycompress: the newest rotated file stays plain, so a writer that
    # has not reopened yet can still finish its last line in it.
    assert (log_dir / "dbbackup.log.1").read_text(encoding="utf-8") == "first week\n"
    assert log.read_bytes() == b""

    write_log(log, "second week\n")
    result = logrotate("-f", "-s", state, str(config))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in log_dir.iterdir()) == [
        "dbbackup.log",
        "dbbackup.log.1",
        "dbbackup.log.2.gz",
    ]
    assert (log_dir / "dbbackup.log.1").read_text(encoding="utf-8") == "second week\n"
    with gzip.open(log_dir / "dbbackup.log.2.gz", "rt", encoding="utf-8") as older:
        assert older.read() == "first week\n"

    for path in log_dir.iterdir():
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600, path.name
        assert (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid()), path.name


@pytest.mark.timeout(60)
def test_empty_and_missing_logs_are_left_alone(tmp_path: Path) -> None:
    config, log_dir = rewritten_config(tmp_path)
    state = str(tmp_path / "state")
    # missingok: no log at all is not an error.
    result = logrotate("-f", "-s", state, str(config))
    assert result.returncode == 0, result.stderr
    # notifempty: an empty log is not rotated, even when forced.
    write_log(log_dir / "dbbackup.log", "")
    result = logrotate("-f", "-s", state, str(config))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in log_dir.iterdir()) == ["dbbackup.log"]
