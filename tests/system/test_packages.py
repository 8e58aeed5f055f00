"""The .deb and .rpm of packaging/, built with `make deb` / `make rpm` and used for real.

The packages are built once per module in a temp copy of the repository (so
the build leaves nothing in the work tree), then checked with lintian and
rpmlint. As root, the .deb is installed with apt-get, runs a backup, verify
and restore as the `dbbackup` user against a throwaway PostgreSQL, and is
purged again. A machine that already has a dbbackup package is left alone.
"""

from __future__ import annotations

import bz2
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import PostgresServer, pg_fingerprint, unavailable

import dbbackup
from dbbackup.config import render_sample

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "packaging" / "dbbackup.toml"
UNITS = sorted(p.name for p in (REPO / "systemd").iterdir() if p.suffix in (".service", ".timer"))
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOL_ENV = {**os.environ, "LC_ALL": "C.UTF-8", "PATH": SYSTEM_PATH}
# Debian packages that must provide the program's libraries (never pip).
DEBIAN_PYTHON_DEPS = {
    "python3-click", "python3-psycopg", "python3-zstandard", "python3-lz4",
    "python3-pythonjsonlogger", "python3-pymysql", "python3-cryptography", "python3-prometheus-client",
}  # fmt: skip
# The SELinux policy module format's magic number, little-endian.
SELINUX_MODULE_MAGIC = bytes.fromhex("8fff7cf9")
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "__pycache__", "*.pyc", ".*_cache", ".hypothesis",
    "*.egg-info", "tmp", "*.pp",
)  # fmt: skip


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            unavailable(f"{tool} not installed: run scripts/system-deps")


def run(*args: str, timeout: float = 120, cwd: Path | None = None, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    done = subprocess.run(
        args, cwd=cwd, env=env or TOOL_ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{output}")
    return done


# -- fast checks of the sources ---------------------------------------------------------------


def test_shipped_config_is_the_generated_sample() -> None:
    assert SHIPPED_CONFIG.read_text(encoding="utf-8") == render_sample(), (
        "packaging/dbbackup.toml is stale: regenerate it with "
        "`.venv/bin/dbbackup config init -o packaging/dbbackup.toml --force`"
    )


def test_package_versions_match_the_program() -> None:
    changelog = (REPO / "packaging" / "debian" / "changelog").read_text(encoding="utf-8")
    deb_version = re.match(r"dbbackup \(([^)]+)\)", changelog)
    spec = (REPO / "packaging" / "rpm" / "dbbackup.spec").read_text(encoding="utf-8")
    rpm_version = re.search(r"^Version:\s+(\S+)$", spec, re.MULTILINE)
    assert deb_version and rpm_version
    assert deb_version.group(1) == rpm_version.group(1) == dbbackup.__version__


# -- built packages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    deb: Path
    rpms: dict[str, Path]  # "dbbackup", "dbbackup-selinux", "src"


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    """`make deb rpm` in a temp copy of the repository; the packages stay until the module ends."""
    need("make", "dpkg-buildpackage", "dh", "dh_python3", "checkmodule")
    need("rpmbuild", "rpm2cpio", "cpio", "bzip2")
    work = Path(tempfile.mkdtemp(prefix="dbbackup-pkg-build-"))
    try:
        tree = work / "src"
        shutil.copytree(REPO, tree, ignore=COPY_IGNORE, symlinks=True)
        run("make", "deb", "rpm", cwd=tree, timeout=600)
        version = dbbackup.__version__
        dist = tree / "dist"
        yield Built(
            deb=dist / f"dbbackup_{version}_all.deb",
            rpms={
                "dbbackup": dist / f"dbbackup-{version}-1.noarch.rpm",
                "dbbackup-selinux": dist / f"dbbackup-selinux-{version}-1.noarch.rpm",
                "src": dist / f"dbbackup-{version}-1.src.rpm",
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def deb_field(deb: Path, field: str) -> str:
    return run("dpkg-deb", "--field", str(deb), field).stdout.strip()


def deb_entries(deb: Path) -> dict[str, str]:
    """Path inside the .deb -> "mode owner/group" as dpkg-deb lists them."""
    entries = {}
    for line in run("dpkg-deb", "--contents", str(deb)).stdout.splitlines():
        mode, owner, _size, _date, _time, path = line.split(maxsplit=5)
        entries[path.removeprefix(".").rstrip("/") or "/"] = f"{mode} {owner}"
    return entries


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deb_contents(built: Built) -> None:
    entries = deb_entries(built.deb)
    expected = [
        "/usr/bin/dbbackup",
        "/usr/lib/python3/dist-packages/dbbackup/cli/main.py",
        "/usr/lib/sysusers.d/dbbackup.conf",
        "/usr/lib/tmpfiles.d/dbbackup.conf",
        "/etc/logrotate.d/dbbackup",
        "/usr/share/man/man8/dbbackup.8.gz",
        "/usr/share/man/man5/dbbackup.toml.5.gz",
        # Named by the units' Documentation=, so it must stay uncompressed.
        "/usr/share/doc/dbbackup/systemd.md",
        *(f"/lib/systemd/system/{unit}" for unit in UNITS),
    ]
    assert [path for path in expected if path not in entries] == []
    assert entries["/etc/dbbackup"] == "drwxr-x--- root/root"
    assert entries["/etc/dbbackup/conf.d"] == "drwxr-x--- root/root"
    assert entries["/etc/dbbackup/instances"] == "drwxr-x--- root/root"
    assert entries["/etc/dbbackup/dbbackup.toml"] == "-rw-r----- root/root"

    control = Path(tempfile.mkdtemp(prefix="dbbackup-deb-control-"))
    try:
        run("dpkg-deb", "--control", str(built.deb), str(control))
        conffiles = (control / "conffiles").read_text(encoding="utf-8").split()
        postinst = (control / "postinst").read_text(encoding="utf-8")
    finally:
        shutil.rmtree(control)
    assert sorted(conffiles) == ["/etc/dbbackup/dbbackup.toml", "/etc/logrotate.d/dbbackup"]
    # The user exists before the statoverride names its group, and nothing is started
    # (test_deb_installs_backs_up_and_purges_cleanly checks that nothing is enabled).
    assert postinst.index("systemd-sysusers") < postinst.index("dpkg-statoverride --update --add")
    assert "deb-systemd-invoke start" not in postinst

    depends = {d.split()[0] for d in deb_field(built.deb, "Depends").split(", ")}
    assert depends >= DEBIAN_PYTHON_DEPS


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lintian_reports_no_errors_or_warnings(built: Built) -> None:
    need("lintian")
    done = run("lintian", "--fail-on", "error,warning", str(built.deb), check=False, timeout=300)
    findings = [line for line in done.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert (done.returncode, findings) == (0, [])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rpm_contents_and_scriptlets(built: Built) -> None:
    main = str(built.rpms["dbbackup"])
    flags = run("rpm", "-qp", "--qf", "[%{FILENAMES}|%{FILEFLAGS:fflags}|%{FILEMODES:perms}|%{FILEUSERNAME}"
                ":%{FILEGROUPNAME}\n]", main).stdout  # fmt: skip
    files = {line.split("|")[0]: line.split("|")[1:] for line in flags.splitlines()}
    assert files["/etc/dbbackup/dbbackup.toml"] == ["cn", "-rw-r-----", "root:dbbackup"]
    assert files["/etc/logrotate.d/dbbackup"][0] == "cn"
    assert files["/etc/dbbackup/instances"][1:] == ["drwxr-x---", "root:dbbackup"]
    assert files["/var/lib/dbbackup"][1:] == ["drwx------", "dbbackup:dbbackup"]
    for unit in UNITS:
        assert f"/usr/lib/systemd/system/{unit}" in files
    assert "/usr/lib/sysusers.d/dbbackup.conf" in files
    assert "/usr/bin/dbbackup" in files
    assert any(re.match(r"/usr/lib/python3\.\d+/site-packages/dbbackup/cli/main\.py$", f) for f in files)

    scripts = run("rpm", "-qp", "--scripts", main).stdout
    assert "useradd -r -g dbbackup -d /var/lib/dbbackup" in scripts
    assert "enable" not in scripts
    requires = run("rpm", "-qp", "--requires", main).stdout
    assert re.search(r"^python3\.\d+dist\(psycopg\) >= 3\.1$", requires, re.MULTILINE)

    selinux = str(built.rpms["dbbackup-selinux"])
    listing = run("rpm", "-qlp", selinux).stdout.split()
    module = "/usr/share/selinux/packages/targeted/dbbackup.pp.bz2"
    assert module in listing
    # %selinux_modules_install: the module goes into the policy store at priority 200.
    scripts = run("rpm", "-qp", "--scripts", selinux).stdout
    assert re.search(r"semodule .*-X 200 -i " + re.escape(module), scripts)
    with tempfile.TemporaryDirectory(prefix="dbbackup-rpm-payload-") as payload:
        run("sh", "-c", 'rpm2cpio "$1" | cpio -idm --quiet', "sh", selinux, cwd=Path(payload))
        policy = bz2.decompress((Path(payload) / module.lstrip("/")).read_bytes())
    assert policy[:4] == SELINUX_MODULE_MAGIC


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rpmlint_reports_no_errors(built: Built) -> None:
    need("rpmlint")
    config = str(REPO / "packaging" / "rpm" / "rpmlint.toml")
    done = run("rpmlint", "-c", config, *map(str, built.rpms.values()), check=False)
    summary = re.search(r"(\d+) errors, (\d+) warnings", done.stdout)
    assert summary, done.stdout + done.stderr
    assert (done.returncode, summary.group(1)) == (0, "0"), done.stdout


# -- the .deb on this machine ------------------------------------------------------------------


def installed_version(package: str) -> str | None:
    done = run("dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", package, check=False)
    status, _, version = done.stdout.partition("|")
    return version if done.returncode == 0 and status.strip() == "ii" else None


def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    # Another apt run on the machine holds the lock for a while at most.
    env = {**TOOL_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    return run("apt-get", "-y", "-o", "DPkg::Lock::Timeout=120", *args, env=env, timeout=600)


def as_dbbackup(*args: str, cwd: Path, password: str = "") -> subprocess.CompletedProcess[str]:
    """/usr/bin/dbbackup as the dbbackup user; the password travels in the environment only."""
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": "/var/lib/dbbackup"}
    if password:
        env["DBBACKUP_CONNECTION_PASSWORD"] = password
    return run("runuser", "-u", "dbbackup", "--", "/usr/bin/dbbackup", *args, env=env, cwd=cwd)


def enabled_links() -> list[str]:
    """Units of dbbackup that systemd would start at boot or by timers.target."""
    return sorted(
        str(link)
        for pattern in ("*.wants/dbbackup*", "*.requires/dbbackup*")
        for link in Path("/etc/systemd/system").glob(pattern)
    )


@pytest.fixture
def installed_deb(built: Built) -> Iterator[Path]:
    """The built .deb installed with apt-get, purged afterwards whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("installing a .deb needs root")
    need("apt-get", "dpkg-query", "dpkg-statoverride", "runuser", "systemd-sysusers")
    if installed_version("dbbackup") is not None:
        pytest.skip("a dbbackup package is installed on this machine; the test will not replace it")
    apt_get("install", str(built.deb))
    try:
        yield built.deb
    finally:
        # The test purges it itself; this is for a test that failed half-way.
        if run("dpkg-query", "-W", "dbbackup", check=False).returncode == 0:
            apt_get("purge", "dbbackup")


def make_private_workdir(owner: pwd.struct_passwd) -> Path:
    work = Path(tempfile.mkdtemp(prefix="dbbackup-pkg-run-"))
    os.chown(work, owner.pw_uid, owner.pw_gid)
    return work


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deb_installs_backs_up_and_purges_cleanly(installed_deb: Path) -> None:
    assert installed_version("dbbackup") == dbbackup.__version__
    assert run("/usr/bin/dbbackup", "--version").stdout.strip() == f"dbbackup, version {dbbackup.__version__}"
    user = pwd.getpwnam("dbbackup")
    assert (user.pw_dir, user.pw_shell) == ("/var/lib/dbbackup", "/usr/sbin/nologin")

    # /etc/dbbackup: root writes, the dbbackup group reads, nobody else gets in.
    for path, mode in [("/etc/dbbackup", 0o750), ("/etc/dbbackup/instances", 0o750),
                       ("/etc/dbbackup/dbbackup.toml", 0o640)]:  # fmt: skip
        info = os.stat(path)
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, 0, user.pw_gid), path
    for path in ("/var/lib/dbbackup", "/var/log/dbbackup"):
        assert os.stat(path).st_uid == user.pw_uid, path
    assert enabled_links() == []

    server = PostgresServer()
    server.start()
    work = make_private_workdir(user)
    try:
        server.create_database("shop")
        server.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, note text);"
            "INSERT INTO orders SELECT i, md5(i::text) FROM generate_series(1, 5000) i;",
            dbname="shop",
        )
        config = work / "instance.toml"
        config.write_text(
            f'engine = "postgres"\n\n[connection]\nhost = "{server.host}"\nport = {server.port}\n'
            f'user = "postgres"\n\n[storage]\nrepository = "{work / "repo"}"\n',
            encoding="utf-8",
        )
        os.chown(config, user.pw_uid, user.pw_gid)
        config.chmod(0o600)

        # The shipped /etc/dbbackup/dbbackup.toml is readable and valid for the service user.
        assert "/etc/dbbackup/dbbackup.toml" in as_dbbackup("config", "validate", cwd=work).stdout
        as_dbbackup("--config", str(config), "backup", "--database", "shop", cwd=work,
                    password=server.password)  # fmt: skip
        as_dbbackup("--config", str(config), "verify", "latest", "--deep", cwd=work, password=server.password)
        as_dbbackup("--config", str(config), "--log-format", "json", "restore", "latest",
                    "--database", "shop", "--target-db", "shop_restored", cwd=work,
                    password=server.password)  # fmt: skip
        assert pg_fingerprint(server, "shop_restored") == pg_fingerprint(server, "shop")
        stored = [p for p in (work / "repo").rglob("*") if p.is_file()]
        assert stored and all(p.stat().st_uid == user.pw_uid for p in stored)
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    apt_get("purge", "dbbackup")
    assert installed_version("dbbackup") is None
    for path in ("/usr/bin/dbbackup", "/etc/dbbackup", "/var/log/dbbackup", "/run/dbbackup",
                 "/usr/lib/sysusers.d/dbbackup.conf", "/lib/systemd/system/dbbackup@.service",
                 "/etc/logrotate.d/dbbackup", "/usr/lib/python3/dist-packages/dbbackup"):  # fmt: skip
        assert not os.path.lexists(path), path
    assert "dbbackup" not in run("dpkg-statoverride", "--list").stdout
    assert enabled_links() == []
    # Backups outlive the program: /var/lib/dbbackup stays only while something is in it.
    assert not Path("/var/lib/dbbackup").exists() or any(Path("/var/lib/dbbackup").iterdir())
