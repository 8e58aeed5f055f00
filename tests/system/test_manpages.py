"""The man pages cover every command, option and configuration key, and lint clean."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from harness import require_binary

from dbbackup.cli.main import cli
from dbbackup.config import schema_keys

ROOT = Path(__file__).resolve().parents[2]
MAN8 = ROOT / "man" / "dbbackup.8"
MAN5 = ROOT / "man" / "dbbackup.toml.5"


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(walk(command, path))
    return found


def test_every_command_and_option_is_documented() -> None:
    page = MAN8.read_text(encoding="utf-8")
    missing = []
    for path, command in [((), cli), *walk(cli)]:
        if path and not re.search(rf"\.It Ic {re.escape(' '.join(path))}\b|Ic {re.escape(path[-1])}\b", page):
            missing.append(" ".join(path))
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            for opt in param.opts + param.secondary_opts:
                flag = opt.lstrip("-")
                if f"Fl -{flag}" not in page and f"Fl {flag}" not in page:
                    missing.append(f"{' '.join(path) or 'dbbackup'} {opt}")
    assert missing == [], f"not in man/dbbackup.8: {missing}"


def test_every_exit_code_is_documented() -> None:
    page = MAN8.read_text(encoding="utf-8")
    section = page.split(".Sh EXIT STATUS", 1)[1].split(".Sh ", 1)[0]
    for code in (0, 1, 2, 65, 66, 69, 70, 73, 74, 75, 77, 78):
        assert f".It {code}\n" in section


def test_config_page_is_generated_from_the_schema() -> None:
    fresh = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-config-man.py"), "--print"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert fresh == MAN5.read_text(encoding="utf-8"), "run scripts/gen-config-man.py"
    for key in schema_keys():
        assert f".It Cm {key.name} " in fresh
        assert key.env_var in fresh


@pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda p: p.name)
def test_mandoc_lint_is_clean(page: Path) -> None:
    mandoc = require_binary("mandoc", "mandoc")
    done = subprocess.run([str(mandoc), "-Tlint", "-W", "warning", str(page)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
