"""The systemd units, sysusers.d and tmpfiles.d files under systemd/.

Checked offline with the host's own tools: `systemd-analyze verify` and
`systemd-analyze security --offline=true` need no running systemd (PID 1 may
be anything). `verify` insists that ExecStart= names an existing executable,
so the units are copied to a temp dir with /usr/bin/dbbackup rewritten to a
stub script there; `--man=no` skips the man pages that are not installed.
`verify` does not count unknown keys or sections as errors, so any output at
all fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbbackup import errors

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
SERVICES = sorted(p.name for p in SYSTEMD_DIR.glob("*.service"))
TIMERS = sorted(p.name for p in SYSTEMD_DIR.glob("*.timer"))
UNITS = SERVICES + TIMERS
ONESHOTS = ["dbbackup@.service", "dbbackup-verify@.service", "dbbackup-cleanup@.service"]
PROGRAM = "/usr/bin/dbbackup"

# Exit codes of dbbackup(8): sysexits.h plus 1 (general) and 2 (usage).
DOCUMENTED_EXIT_CODES = {0, 1, 2, 65, 66, 69, 70, 73, 74, 75, 77, 78}
FAILURE_CODES = DOCUMENTED_EXIT_CODES - {0}
# Time cures these: the database/storage comes back, the lock is released.
RETRYABLE = {69, 75}
# A daemon may also restart after a crash (1, 70) or an I/O error (74).
SERVE_NO_RESTART = {2, 65, 66, 73, 77, 78}

TOOL_ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}

Unit = dict[str, dict[str, list[str]]]


def need_tool(name: str) -> str:
    """Path of a tool; skip without it, or fail when CI requires every tool."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("DBBACKUP_TEST_REQUIRE_SERVERS") == "1":
            pytest.fail(f"{name} is required (DBBACKUP_TEST_REQUIRE_SERVERS=1) but missing")
        pytest.skip(f"{name} not installed")
    return path


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value in file order (keys may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def load(name: str) -> Unit:
    return parse_unit((SYSTEMD_DIR / name).read_text(encoding="utf-8"))


def last(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= missing"
    return values[-1]


def exit_codes(value: str) -> set[int]:
    return {int(word) for word in value.split()}


@pytest.fixture(scope="module")
def verify_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with ExecStart= pointing at an executable that exists."""
    directory = tmp_path_factory.mktemp("units")
    stub = directory / "dbbackup-stub"
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stub.chmod(0o755)
    for name in UNITS:
        text = (SYSTEMD_DIR / name).read_text(encoding="utf-8")
        (directory / name).write_text(text.replace(PROGRAM, str(stub)), encoding="utf-8")
    return directory


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=TOOL_ENV, capture_output=True, text=True, timeout=120, check=False
    )


def test_units_found() -> None:
    assert set(SERVICES) == {*ONESHOTS, "dbbackup-serve.service"}
    assert set(TIMERS) == {"dbbackup@.timer", "dbbackup-verify@.timer"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_is_silent(name: str, verify_dir: Path) -> None:
    tool = need_tool("systemd-analyze")
    result = run([tool, "verify", "--man=no", f"./{name}"], cwd=verify_dir)
    output = result.stdout + result.stderr
    assert "Unknown key" not in output
    assert "Unknown section" not in output
    assert output == ""
    assert result.returncode == 0


@pytest.mark.timeout(60)
def test_verify_catches_unknown_keys(verify_dir: Path, tmp_path: Path) -> None:
    """Guards the test above: a typo must show up in the output it reads."""
    tool = need_tool("systemd-analyze")
    text = (verify_dir / "dbbackup@.service").read_text(encoding="utf-8")
    (tmp_path / "dbbackup@.service").write_text(
        text.replace("ProtectClock=", "ProtectClocks="), encoding="utf-8"
    )
    result = run([tool, "verify", "--man=no", "./dbbackup@.service"], cwd=tmp_path)
    assert "Unknown key 'ProtectClocks'" in result.stdout + result.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", SERVICES)
def test_security_exposure_at_most_2(name: str, verify_dir: Path) -> None:
    tool = need_tool("systemd-analyze")
    # --threshold is in tenths: exit non-zero when exposure is above 2.0.
    result = run([tool, "security", "--offline=true", "--threshold=20", f"./{name}"], cwd=verify_dir)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_exit_codes_match_errors_module() -> None:
    defined = {
        value for key, value in vars(errors).items() if key.startswith("EX_") and isinstance(value, int)
    }
    assert defined == DOCUMENTED_EXIT_CODES


@pytest.mark.parametrize("name", SERVICES)
def test_exit_codes_are_documented_ones(name: str) -> None:
    service = load(name)["Service"]
    for key in ("RestartPreventExitStatus", "SuccessExitStatus", "RestartForceExitStatus"):
        for value in service.get(key, []):
            assert exit_codes(value) <= FAILURE_CODES, f"{key}={value}"
    assert "SuccessExitStatus" not in service, "no failure of dbbackup is a success"


@pytest.mark.parametrize("name", ONESHOTS)
def test_oneshots_retry_only_transient_failures(name: str) -> None:
    unit = load(name)
    assert last(unit, "Service", "Type") == "oneshot"
    assert last(unit, "Service", "Restart") == "on-failure"
    prevented = exit_codes(last(unit, "Service", "RestartPreventExitStatus"))
    assert prevented == FAILURE_CODES - RETRYABLE
    # Retries are bounded: a limited number of starts within an interval.
    assert 1 < int(last(unit, "Unit", "StartLimitBurst")) <= 5
    assert last(unit, "Unit", "StartLimitIntervalSec").endswith("h")
    assert last(unit, "Service", "RestartSec").endswith("min")


def test_serve_is_a_watched_daemon() -> None:
    unit = load("dbbackup-serve.service")
    assert last(unit, "Service", "Type") == "notify"
    assert last(unit, "Service", "NotifyAccess") == "main"
    assert last(unit, "Service", "WatchdogSec")
    assert last(unit, "Service", "Restart") == "on-failure"
    prevented = exit_codes(last(unit, "Service", "RestartPreventExitStatus"))
    assert prevented == SERVE_NO_RESTART
    assert last(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", ONESHOTS)
def test_oneshots_rely_on_extend_timeout(name: str) -> None:
    """EXTEND_TIMEOUT_USEC= is only read when the notify socket is open to
    the main process; the base timeout must be finite so a stall is killed."""
    unit = load(name)
    assert last(unit, "Service", "NotifyAccess") == "main"
    timeout = last(unit, "Service", "TimeoutStartSec")
    assert timeout not in {"infinity", "0"}
    assert last(unit, "Service", "KillMode") == "mixed"


@pytest.mark.parametrize("name", ONESHOTS)
def test_oneshots_run_the_documented_command(name: str) -> None:
    command = last(load(name), "Service", "ExecStart").split()
    assert command[:3] == [PROGRAM, "--instance", "%i"]
    expected = {
        "dbbackup@.service": ["backup"],
        "dbbackup-verify@.service": ["verify", "latest", "--deep"],
        "dbbackup-cleanup@.service": ["cleanup"],
    }[name]
    assert command[3:] == expected


def _sandbox(unit: Unit) -> dict[str, list[str]]:
    ignored = {
        "Type", "ExecStart", "NotifyAccess", "TimeoutStartSec", "TimeoutStopSec",
        "KillMode", "Restart", "RestartSec", "RestartPreventExitStatus", "WatchdogSec",
        "Nice", "IOSchedulingClass", "IOSchedulingPriority", "CPUSchedulingPolicy",
    }  # fmt: skip
    return {k: v for k, v in unit["Service"].items() if k not in ignored}


def test_every_service_has_the_same_sandbox() -> None:
    sandboxes = {name: _sandbox(load(name)) for name in SERVICES}
    reference = sandboxes["dbbackup@.service"]
    for name, sandbox in sandboxes.items():
        assert sandbox == reference, name
    expected = {
        "User": ["dbbackup"],
        "Group": ["dbbackup"],
        "UMask": ["0077"],
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "MemoryDenyWriteExecute": ["yes"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    }
    for key, value in expected.items():
        assert reference[key] == value, key
    # A database client may talk to any host: no IP allow list by default.
    assert "IPAddressDeny" not in reference
    assert "PrivateNetwork" not in reference


def test_unit_references_exist() -> None:
    """verify does not notice a misspelled OnSuccess= or After= target."""
    for name in UNITS:
        unit = load(name)
        for key in ("OnSuccess", "OnFailure", "After", "Wants", "Requires"):
            for value in unit.get("Unit", {}).get(key, []):
                for ref in value.split():
                    if ref.startswith("dbbackup"):
                        template = re.sub(r"@%i\.", "@.", ref)
                        assert (SYSTEMD_DIR / template).is_file(), f"{name}: {key}={ref}"


def test_backup_triggers_cleanup_only_on_success() -> None:
    unit = load("dbbackup@.service")
    assert last(unit, "Unit", "OnSuccess") == "dbbackup-cleanup@%i.service"
    assert "ExecStartPost" not in unit["Service"]
    assert not (SYSTEMD_DIR / "dbbackup-cleanup@.timer").exists()


@pytest.mark.parametrize("name", TIMERS)
def test_timer_settings(name: str) -> None:
    unit = load(name)
    timer = unit["Timer"]
    assert last(unit, "Timer", "Persistent") == "true"
    assert last(unit, "Timer", "RandomizedDelaySec")
    assert last(unit, "Timer", "FixedRandomDelay") == "true"
    assert last(unit, "Timer", "AccuracySec")
    assert "Unit" not in timer, "a timer activates the service of its own name"
    assert (SYSTEMD_DIR / name.replace(".timer", ".service")).is_file()
    assert last(unit, "Install", "WantedBy") == "timers.target"


def test_backup_timer_is_daily() -> None:
    assert load("dbbackup@.timer")["Timer"]["OnCalendar"] == ["daily"]


@pytest.mark.timeout(60)
def test_verify_timer_is_weekly_after_the_backup() -> None:
    tool = need_tool("systemd-analyze")
    (expression,) = load("dbbackup-verify@.timer")["Timer"]["OnCalendar"]
    result = run([tool, "calendar", "--iterations=3", expression])
    assert result.returncode == 0, result.stderr
    elapses = re.findall(r"(?:Next elapse|Iter\. #\d): (\w{3}) \S+ (\d\d):", result.stdout)
    assert len(elapses) == 3, result.stdout
    # Sunday, and after the daily backup's window (00:00 + up to 30min).
    assert all(day == "Sun" and int(hour) >= 1 for day, hour in elapses)


def _tmpfiles_lines() -> list[list[str]]:
    text = (SYSTEMD_DIR / "tmpfiles.d" / "dbbackup.conf").read_text(encoding="utf-8")
    return [line.split() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_tmpfiles_match_the_units() -> None:
    entries = {fields[1]: fields for fields in _tmpfiles_lines()}
    assert set(entries) == {"/var/lib/dbbackup", "/var/log/dbbackup", "/run/dbbackup"}
    for kind, _path, mode, user, group, *_rest in entries.values():
        assert (kind, mode, user, group) == ("d", "0700", "dbbackup", "dbbackup")
    service = load("dbbackup@.service")["Service"]
    assert service["StateDirectory"] == ["dbbackup"]
    assert service["LogsDirectory"] == ["dbbackup"]
    assert service["RuntimeDirectory"] == ["dbbackup"]
    for key in ("StateDirectoryMode", "LogsDirectoryMode", "RuntimeDirectoryMode"):
        assert service[key] == ["0700"]
    # Several units share /run/dbbackup; the first to stop must not remove it.
    assert service["RuntimeDirectoryPreserve"] == ["yes"]


@pytest.fixture
def sysusers_root(tmp_path: Path) -> Iterator[Path]:
    """A root with an empty /etc/passwd and /etc/group, then dbbackup's user."""
    tool = need_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        (tmp_path / "etc" / name).write_text("", encoding="utf-8")
    conf = SYSTEMD_DIR / "sysusers.d" / "dbbackup.conf"
    result = run([tool, f"--root={tmp_path}", str(conf)])
    assert result.returncode == 0, result.stderr
    assert "Ignoring" not in result.stderr and "Failed" not in result.stderr
    yield tmp_path


@pytest.mark.timeout(60)
def test_sysusers_creates_the_system_user(sysusers_root: Path) -> None:
    passwd = (sysusers_root / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
    group = (sysusers_root / "etc" / "group").read_text(encoding="utf-8").splitlines()
    (user,) = [line.split(":") for line in passwd]
    (grp,) = [line.split(":") for line in group]
    name, _pw, uid, gid, _gecos, home, shell = user
    assert (name, home, shell) == ("dbbackup", "/var/lib/dbbackup", "/usr/sbin/nologin")
    assert grp[0] == "dbbackup" and grp[2] == gid
    assert int(uid) < 1000, "a system user"


@pytest.mark.timeout(60)
def test_sysusers_dry_run_is_clean() -> None:
    tool = need_tool("systemd-sysusers")
    conf = SYSTEMD_DIR / "sysusers.d" / "dbbackup.conf"
    result = run([tool, "--dry-run", str(conf)])
    assert result.returncode == 0, result.stderr
    assert "Failed" not in result.stderr and "Ignoring" not in result.stderr


@pytest.mark.timeout(60)
def test_tmpfiles_creates_private_dirs(sysusers_root: Path) -> None:
    tool = need_tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        # Creating directories owned by another user needs root.
        if os.environ.get("DBBACKUP_TEST_REQUIRE_SERVERS") == "1":
            pytest.fail("systemd-tmpfiles --create needs root")
        pytest.skip("systemd-tmpfiles --create needs root")
    conf = SYSTEMD_DIR / "tmpfiles.d" / "dbbackup.conf"
    # tmpfiles resolves user names in the --root's /etc/passwd, not the host's.
    result = run([tool, f"--root={sysusers_root}", "--create", str(conf)])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    passwd = (sysusers_root / "etc" / "passwd").read_text(encoding="utf-8")
    uid, gid = (int(field) for field in passwd.split(":")[2:4])
    for path in ("var/lib/dbbackup", "var/log/dbbackup", "run/dbbackup"):
        info = (sysusers_root / path).stat()
        assert stat.S_ISDIR(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o700, path
        assert (info.st_uid, info.st_gid) == (uid, gid), path
