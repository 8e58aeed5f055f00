"""The SELinux policy module under selinux/.

sesearch and seinfo cannot read a policy module (.pp) nor the .mod inside
it: they need a complete policy. So the module is built with the
distribution's devel Makefile in a temp copy, then linked with the
distribution's base module (and the postgresql and mysql modules, so the
optional blocks that need them are enabled) by `semodule_link`, and expanded
into a kernel policy by `semodule_expand`. That policy is what sesearch and
seinfo query, and what `setfiles -c` checks the module's file contexts
against. No policy is installed and nothing needs SELinux enabled.
"""

from __future__ import annotations

import bz2
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SELINUX_DIR = REPO / "selinux"
DEVEL_MAKEFILE = Path("/usr/share/selinux/devel/Makefile")
POLICY_SHARE = Path("/usr/share/selinux")
TOOLS = (
    "make", "checkmodule", "semodule_package", "semodule_unpackage", "semodule_link",
    "semodule_expand", "sesearch", "seinfo", "setfiles",
)  # fmt: skip
LINKED_MODULES = ("postgresql", "mysql")

# (path, type it must get from dbbackup.fc)
FILE_CONTEXTS = [
    ("/usr/bin/dbbackup", "dbbackup_exec_t"),
    ("/etc/dbbackup", "dbbackup_etc_t"),
    ("/etc/dbbackup/dbbackup.toml", "dbbackup_etc_t"),
    ("/etc/dbbackup/instances/main.toml", "dbbackup_etc_t"),
    ("/var/lib/dbbackup", "dbbackup_var_lib_t"),
    ("/var/lib/dbbackup/repo/main/20250101T000000+0000-full-abc/manifest.json",
     "dbbackup_var_lib_t"),
    ("/var/lib/dbbackup/.pgpass", "dbbackup_var_lib_t"),
    ("/var/log/dbbackup", "dbbackup_log_t"),
    ("/var/log/dbbackup/dbbackup.log", "dbbackup_log_t"),
    ("/run/dbbackup", "dbbackup_var_run_t"),
    ("/run/dbbackup/main.lock", "dbbackup_var_run_t"),
    ("/usr/lib/systemd/system/dbbackup@.service", "dbbackup_unit_t"),
    ("/usr/lib/systemd/system/dbbackup-serve.service", "dbbackup_unit_t"),
]  # fmt: skip
NOT_OURS = ["/usr/bin/dbbackupx/y", "/etc/dbbackup.toml", "/var/lib/dbbackups", "/run/db"]

# (target type, class, permission) that dbbackup_t must be allowed.
REQUIRED = [
    ("dbbackup_exec_t", "file", "entrypoint"),
    ("dbbackup_etc_t", "file", "read"),
    ("dbbackup_var_lib_t", "dir", "create"),
    ("dbbackup_var_lib_t", "file", "create"),
    ("dbbackup_var_lib_t", "file", "rename"),
    ("dbbackup_var_lib_t", "file", "map"),
    ("dbbackup_log_t", "file", "append"),
    ("dbbackup_log_t", "file", "create"),
    ("dbbackup_var_run_t", "file", "lock"),
    ("dbbackup_var_run_t", "fifo_file", "create"),
    ("dbbackup_tmp_t", "file", "create"),
    ("dbbackup_port_t", "tcp_socket", "name_bind"),
    ("bin_t", "file", "execute_no_trans"),
    ("postgresql_t", "unix_stream_socket", "connectto"),
    ("postgresql_runtime_t", "sock_file", "write"),
    ("postgresql_port_t", "tcp_socket", "name_connect"),
    ("mysqld_t", "unix_stream_socket", "connectto"),
    ("mysqld_runtime_t", "sock_file", "write"),
    ("mysqld_port_t", "tcp_socket", "name_connect"),
    ("http_port_t", "tcp_socket", "name_connect"),
    ("dns_port_t", "tcp_socket", "name_connect"),
    ("devlog_t", "sock_file", "write"),
    ("init_t", "unix_dgram_socket", "sendto"),
    ("init_runtime_t", "sock_file", "write"),
]

# Rules that would make the domain pointless.
FORBIDDEN = [
    ("dbbackup_etc_t", "file", "write"),
    ("dbbackup_exec_t", "file", "write"),
    ("shadow_t", "file", "read"),
    ("user_home_t", "file", "read"),
    ("postgresql_db_t", "file", "read"),
    ("mysqld_db_t", "file", "read"),
    ("unreserved_port_t", "tcp_socket", "name_connect"),
    ("unreserved_port_t", "tcp_socket", "name_bind"),
    ("postgresql_exec_t", "file", "execute"),
]

TOOL_ENV = {**os.environ, "LC_ALL": "C"}


def require_or_skip(reason: str) -> None:
    if os.environ.get("DBBACKUP_TEST_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{reason} (DBBACKUP_TEST_REQUIRE_SERVERS=1)")
    pytest.skip(reason)


def run(argv: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(
        argv, cwd=cwd, env=TOOL_ENV, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result.stdout


def base_module_dir() -> Path | None:
    """The installed policy's module directory that has base.pp."""
    for name in ("default", "targeted", "refpolicy"):
        if (POLICY_SHARE / name / "base.pp.bz2").is_file():
            return POLICY_SHARE / name
    return None


def unpack(module: Path, destination: Path) -> Path:
    data = module.read_bytes()
    if module.suffix == ".bz2":
        data = bz2.decompress(data)
    destination.write_bytes(data)
    return destination


class Built:
    def __init__(self, workdir: Path, policy: Path) -> None:
        self.workdir = workdir
        self.module = workdir / "dbbackup.pp"
        self.policy = policy

    def allow_rules(self, *args: str) -> list[str]:
        """allow rules whose source is dbbackup_t itself, not an attribute."""
        out = run(["sesearch", "--allow", "-s", "dbbackup_t", "-ds", *args, str(self.policy)])
        return [line for line in out.splitlines() if line.startswith("allow ")]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        require_or_skip(f"SELinux tools missing: {' '.join(missing)}")
    modules = base_module_dir()
    if not DEVEL_MAKEFILE.is_file() or modules is None:
        require_or_skip("SELinux policy development files or base module missing")
    assert modules is not None
    workdir = tmp_path_factory.mktemp("selinux") / "selinux"
    shutil.copytree(SELINUX_DIR, workdir, ignore=shutil.ignore_patterns("tmp", "*.pp"))
    run(["make", "-C", str(workdir)])
    packages = [unpack(modules / "base.pp.bz2", workdir / "base.pp")]
    for name in LINKED_MODULES:
        packages.append(unpack(modules / f"{name}.pp.bz2", workdir / f"{name}.pp"))
    linked = workdir / "linked.lnk"
    run(["semodule_link", "-o", str(linked), *map(str, packages), str(workdir / "dbbackup.pp")])
    policy = workdir / "policy.bin"
    run(["semodule_expand", str(linked), str(policy)])
    return Built(workdir, policy)


def module_file_contexts(built: Built) -> list[tuple[str, str, str]]:
    """(regex, file kind, type) from the .fc as packaged into dbbackup.pp."""
    mod, fc = built.workdir / "unpacked.mod", built.workdir / "unpacked.fc"
    run(["semodule_unpackage", str(built.module), str(mod), str(fc)])
    entries = []
    for line in fc.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        regex, context = fields[0], fields[-1]
        kind = fields[1] if len(fields) == 3 else ""
        entries.append((regex, kind, context.split(":")[2]))
    return entries


@pytest.mark.timeout(300)
def test_module_builds_and_names_itself(built: Built) -> None:
    assert built.module.stat().st_size > 0
    assert "dbbackup_t" in run(["seinfo", "-t", "dbbackup_t", str(built.policy)])


@pytest.mark.timeout(300)
def test_file_contexts_are_valid_in_the_policy(built: Built) -> None:
    fc = built.workdir / "valid.fc"
    run(["semodule_unpackage", str(built.module), str(built.workdir / "v.mod"), str(fc)])
    # setfiles -c fails on any context whose type the policy does not define.
    run(["setfiles", "-c", str(built.policy), str(fc)])


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "expected"), FILE_CONTEXTS)
def test_file_context_of(built: Built, path: str, expected: str) -> None:
    matches = [t for regex, _kind, t in module_file_contexts(built) if re.fullmatch(regex, path)]
    assert matches == [expected]


@pytest.mark.timeout(300)
def test_file_contexts_stay_in_our_paths(built: Built) -> None:
    entries = module_file_contexts(built)
    assert len(entries) == 6
    for path in NOT_OURS:
        assert not [t for regex, _k, t in entries if re.fullmatch(regex, path)], path
    kinds = {t: kind for _regex, kind, t in entries}
    assert kinds["dbbackup_exec_t"] == "--", "only a regular file is the entry point"


@pytest.mark.timeout(300)
def test_systemd_starts_the_domain(built: Built) -> None:
    out = run(["sesearch", "-T", "-s", "init_t", "-t", "dbbackup_exec_t", str(built.policy)])
    assert "type_transition init_t dbbackup_exec_t:process dbbackup_t;" in out
    # NoNewPrivileges=yes in the units needs nnp_transition to enter the domain.
    out = run(["sesearch", "--allow", "-s", "init_t", "-t", "dbbackup_t", "-c", "process2",
               str(built.policy)])  # fmt: skip
    assert "nnp_transition" in out


@pytest.mark.timeout(300)
def test_no_transition_from_unconfined_users(built: Built) -> None:
    out = run(["sesearch", "-T", "-t", "dbbackup_exec_t", "-c", "process", str(built.policy)])
    sources = {line.split()[1] for line in out.splitlines() if line.startswith("type_transition")}
    assert sources <= {"init_t", "initrc_t"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("target", "tclass", "perm"), REQUIRED)
def test_required_rule(built: Built, target: str, tclass: str, perm: str) -> None:
    # Without -ds: rules the domain gets through its attributes count too.
    out = run(["sesearch", "--allow", "-s", "dbbackup_t", "-t", target, "-c", tclass,
               "-p", perm, str(built.policy)])  # fmt: skip
    assert [line for line in out.splitlines() if line.startswith("allow")], out


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("target", "tclass", "perm"), FORBIDDEN)
def test_forbidden_rule(built: Built, target: str, tclass: str, perm: str) -> None:
    out = run(["sesearch", "--allow", "-s", "dbbackup_t", "-t", target, "-c", tclass,
               "-p", perm, str(built.policy)])  # fmt: skip
    unconditional = [line for line in out.splitlines() if line.startswith("allow") and "[" not in line]
    assert unconditional == []


@pytest.mark.timeout(300)
def test_rules_name_types_not_attributes(built: Built) -> None:
    """No `allow dbbackup_t file_type:...` and the like: every target is a type."""
    attributes = set(run(["seinfo", "-a", str(built.policy)]).split())
    rules = built.allow_rules()
    assert len(rules) > 50
    targets = {rule.split()[2].split(":")[0] for rule in rules}
    assert targets.isdisjoint(attributes), targets & attributes


@pytest.mark.timeout(300)
def test_domain_is_confined(built: Built) -> None:
    out = run(["seinfo", "-x", "-t", "dbbackup_t", str(built.policy)])
    declaration = next(line for line in out.splitlines() if "type dbbackup_t" in line)
    attributes = {a.strip(" ;") for a in declaration.split(",")[1:]}
    assert attributes == {"domain", "daemon"}
    # No capability at all: the units give none either (CapabilityBoundingSet=).
    caps = run(["sesearch", "--allow", "-s", "dbbackup_t", "-c", "capability", str(built.policy)])
    assert not [line for line in caps.splitlines() if line.startswith("allow")]
    # MemoryDenyWriteExecute=yes in the units; the policy agrees.
    out = run(["sesearch", "--allow", "-s", "dbbackup_t", "-t", "dbbackup_t", "-c", "process",
               "-p", "execmem,execstack,execheap", str(built.policy)])  # fmt: skip
    assert not [line for line in out.splitlines() if line.startswith("allow")]


@pytest.mark.timeout(300)
def test_postgresql_programs_only_behind_a_boolean(built: Built) -> None:
    booleans = run(["seinfo", "-x", "-b", "dbbackup_exec_postgresql_programs", str(built.policy)])
    assert re.search(r"dbbackup_exec_postgresql_programs.*false", booleans), booleans
    rules = built.allow_rules("-t", "postgresql_exec_t")
    assert rules and all("[ dbbackup_exec_postgresql_programs ]:True" in r for r in rules)


def test_policy_source_has_no_broad_grants() -> None:
    te = (SELINUX_DIR / "dbbackup.te").read_text(encoding="utf-8")
    code = "\n".join(line.split("#")[0] for line in te.splitlines())
    for word in ("unconfined", "file_type", "domain_type(", "permissive", "_all_", "exec_type"):
        assert word not in code, word


@pytest.mark.timeout(300)
def test_interfaces_compile(built: Built) -> None:
    """Every interface in dbbackup.if expands and links against the module."""
    test_te = built.workdir / "dbbackupif.te"
    test_te.write_text(
        "policy_module(dbbackupif, 1.0.0)\n"
        "type dbbackupif_t;\ntype dbbackupif_exec_t;\n"
        "init_daemon_domain(dbbackupif_t, dbbackupif_exec_t)\n"
        "role system_r;\n"
        "dbbackup_run(dbbackupif_t, system_r)\n"
        "dbbackup_read_config(dbbackupif_t)\n"
        "dbbackup_read_log(dbbackupif_t)\n"
        "dbbackup_read_var_lib(dbbackupif_t)\n"
        "dbbackup_admin(dbbackupif_t, system_r)\n",
        encoding="utf-8",
    )
    (built.workdir / "dbbackupif.fc").write_text("", encoding="utf-8")
    (built.workdir / "dbbackupif.if").write_text("", encoding="utf-8")
    run(["make", "-f", str(DEVEL_MAKEFILE), "dbbackupif.pp"], cwd=built.workdir)
    linked, policy = built.workdir / "if.lnk", built.workdir / "if.bin"
    packages = [str(built.workdir / f"{name}.pp") for name in ("base", *LINKED_MODULES)]
    run(["semodule_link", "-o", str(linked), *packages, str(built.module),
         str(built.workdir / "dbbackupif.pp")])  # fmt: skip
    run(["semodule_expand", str(linked), str(policy)])
    out = run(["sesearch", "-T", "-s", "dbbackupif_t", "-t", "dbbackup_exec_t", str(policy)])
    assert "dbbackupif_t dbbackup_exec_t:process dbbackup_t" in out
    out = run(["sesearch", "--allow", "-s", "dbbackupif_t", "-t", "dbbackup_etc_t", "-c", "file",
               "-p", "write", str(policy)])  # fmt: skip
    assert "allow dbbackupif_t dbbackup_etc_t:file" in out
