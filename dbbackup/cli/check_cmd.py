"""dbbackup check, and how the monitoring commands find their instances."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click

from dbbackup.actions.check import UNKNOWN, CheckResult, run_check, unknown
from dbbackup.cli.state import CliState, state
from dbbackup.config import DEFAULT_CONFIG_DIR, DurationError, Settings, parse_duration
from dbbackup.errors import DbBackupError


def instance_names(cli_state: CliState) -> list[str | None]:
    """``--instance`` if given; else every ``instances/*.toml``; else the default instance.

    With ``--config FILE`` only that file is read, so it is one instance too.
    """
    if cli_state.instance is not None or cli_state.config_file is not None:
        return [cli_state.instance]
    directory = Path(os.environ.get("DBBACKUP_CONFIG_DIR") or DEFAULT_CONFIG_DIR) / "instances"
    try:
        names = sorted(
            entry.name[: -len(".toml")]
            for entry in os.scandir(directory)
            if entry.name.endswith(".toml") and not entry.name.startswith(".")
        )
    except (FileNotFoundError, NotADirectoryError):
        names = []
    return list(names) or [None]


def load_instances(
    cli_state: CliState, overrides: dict[str, tuple[Any, str]] | None = None, *, setup_logging: bool = True
) -> list[tuple[str, Settings | DbBackupError]]:
    """(instance name, its settings or why they do not load) for every instance."""
    loaded: list[tuple[str, Settings | DbBackupError]] = []
    logging_ready = False
    for name in instance_names(cli_state):
        one = dataclasses.replace(cli_state, instance=name)
        try:
            settings = one.load(overrides, setup_logging=setup_logging and not logging_ready).settings
        except DbBackupError as exc:
            loaded.append((name or "default", exc))
            continue
        logging_ready = True
        loaded.append((settings.instance, settings))
    return loaded


def load_instances_strict(cli_state: CliState, *, setup_logging: bool = True) -> list[Settings]:
    """Every instance's settings; the first instance that does not load raises."""
    result = []
    for _name, settings in load_instances(cli_state, setup_logging=setup_logging):
        if isinstance(settings, DbBackupError):
            raise settings
        result.append(settings)
    return result


@click.command()
@click.option(
    "--max-age",
    metavar="DURATION",
    help="CRITICAL when the newest backup is older than this (default: monitoring.max_backup_age).",
)
@click.option("--no-alert", is_flag=True, help="Do not POST to monitoring.alert_webhook, only report.")
@click.pass_context
def check(ctx: click.Context, max_age: str | None, no_alert: bool) -> None:
    """Monitoring probe: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, with a one-line summary."""
    try:
        limit = parse_duration(max_age) if max_age is not None else None
    except DurationError as exc:
        click.echo(f"DBBACKUP UNKNOWN - --max-age {max_age!r}: {exc}")
        ctx.exit(UNKNOWN)
    checks = []
    good = []
    for name, settings in load_instances(state(ctx)):
        if isinstance(settings, DbBackupError):
            checks.append(unknown(name, f"configuration: {settings.message}"))
        else:
            good.append(settings)
    if good:
        checks.extend(run_check(good, max_age=limit, alert=not no_alert).checks)
    result = CheckResult.of(checks)
    click.echo(result.summary_line())
    ctx.exit(result.state)
