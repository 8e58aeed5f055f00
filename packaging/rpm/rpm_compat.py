"""The work behind packaging/rpm/macros.compat: Fedora macros for Debian's rpmbuild.

Fedora's %pyproject_install runs pip with ``--prefix /usr``, which on Debian
lands in /usr/local/lib/python3.X/dist-packages (Debian's own install scheme).
An rpm wants Fedora's layout, so the wheel is installed here with the
``installer`` library into an explicit /usr/lib/python3.X/site-packages.

    rpm_compat.py install WHEELDIR BUILDROOT SITELIB BINDIR PYTHON
    rpm_compat.py save-files BUILDROOT SITELIB OUTPUT MODULE...
    rpm_compat.py check-import BUILDROOT SITELIB OUTPUT
    rpm_compat.py sysusers FILE
"""

from __future__ import annotations

import importlib
import shlex
import sys
from pathlib import Path

USAGE = __doc__.split("\n\n")[-1] if __doc__ else ""


def install(wheel_dir: Path, buildroot: Path, sitelib: str, bindir: str, python: str) -> None:
    from installer import install as install_wheel
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {wheel_dir}, found {len(wheels)}")
    prefix = str(Path(bindir).parent)
    destination = SchemeDictionaryDestination(
        {"purelib": sitelib, "platlib": sitelib, "scripts": bindir, "data": prefix, "headers": prefix},
        interpreter=python,
        script_kind="posix",
        bytecode_optimization_levels=(0, 1),
        destdir=str(buildroot),
    )
    with WheelFile.open(wheels[0]) as source:
        install_wheel(source, destination, {"INSTALLER": b"rpm\n"})
    hardlink_same_bytecode(buildroot / sitelib.lstrip("/"))


def hardlink_same_bytecode(root: Path) -> None:
    """Link X.opt-1.pyc to X.pyc where they are equal, as Fedora's brp-python-hardlink does."""
    for optimized in root.rglob("*.opt-1.pyc"):
        plain = optimized.with_name(optimized.name.replace(".opt-1.pyc", ".pyc"))
        if plain.is_file() and plain.read_bytes() == optimized.read_bytes():
            optimized.unlink()
            optimized.hardlink_to(plain)


def save_files(buildroot: Path, sitelib: str, output: Path, modules: list[str]) -> None:
    """Write the %files list of the modules and their dist-info, as Fedora's macro does."""
    root = buildroot / sitelib.lstrip("/")
    lines = []
    for module in modules:
        if not (root / module).is_dir():
            raise SystemExit(f"module {module} is not installed in {root}")
        lines.append(f"{sitelib}/{module}/")
    dist_infos = sorted(p.name for p in root.glob("*.dist-info"))
    if len(dist_infos) != 1:
        raise SystemExit(f"expected one .dist-info in {root}, found {dist_infos}")
    lines.append(f"{sitelib}/{dist_infos[0]}/")
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")


def check_import(buildroot: Path, sitelib: str, files: Path) -> None:
    """Import every module listed by save-files from the buildroot."""
    root = buildroot / sitelib.lstrip("/")
    sys.path.insert(0, str(root))
    names = []
    for line in files.read_text(encoding="utf-8").split():
        package = Path(line.rstrip("/")).name
        if package.endswith(".dist-info"):
            continue
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    for name in names:
        importlib.import_module(name)
    print(f"imported {len(names)} modules from {root}")


def sysusers(conf: Path) -> None:
    """Print %pre shell lines creating the sysusers.d users and groups where sysusers can't."""
    for raw in conf.read_text(encoding="utf-8").splitlines():
        fields = shlex.split(raw, comments=True)
        if not fields:
            continue
        if fields[0] != "u" or len(fields) < 6:
            raise SystemExit(f"{conf}: only full 'u' lines are supported: {raw!r}")
        name, gecos, home, shell = fields[1], fields[3], fields[4], fields[5]
        user = shlex.quote(name)
        print(f"getent group {user} >/dev/null || groupadd -r {user}")
        print(
            f"getent passwd {user} >/dev/null || useradd -r -g {user} -d {shlex.quote(home)}"
            f" -s {shlex.quote(shell)} -c {shlex.quote(gecos)} {user}"
        )


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "install" and len(args) == 5:
        install(Path(args[0]), Path(args[1]), args[2], args[3], args[4])
    elif command == "save-files" and len(args) >= 4:
        save_files(Path(args[0]), args[1], Path(args[2]), args[3:])
    elif command == "check-import" and len(args) == 3:
        check_import(Path(args[0]), args[1], Path(args[2]))
    elif command == "sysusers" and len(args) == 1:
        sysusers(Path(args[0]))
    else:
        print(USAGE, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
