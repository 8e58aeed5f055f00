"""dbbackup restore"""

from __future__ import annotations

import sys

import click

from dbbackup import output
from dbbackup.actions.context import open_runtime
from dbbackup.actions.progress import Progress
from dbbackup.actions.restore import RestoreRequest, run_restore
from dbbackup.cli.state import state


@click.command()
@click.argument("set_ref", metavar="SET|latest")
@click.option(
    "--database",
    "-d",
    "databases",
    multiple=True,
    metavar="DB",
    help="Restore only this database of the set (repeatable).",
)
@click.option(
    "--all",
    "all_databases",
    is_flag=True,
    help="Restore roles and tablespaces, then every database of a cluster set.",
)
@click.option("--target-db", metavar="NAME", help="Restore the one selected database under this name.")
@click.option("--clean", is_flag=True, help="Drop and recreate a target database that already exists.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Tables loaded in parallel (default: 2).")
@click.option("--continue-on-error", is_flag=True, help="Go on with the next database when one fails.")
@click.option(
    "--resume",
    is_flag=True,
    help="Skip databases an earlier run of this set restored completely; redo the rest.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; do not touch the server.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-database report as JSON.")
@click.pass_context
def restore(
    ctx: click.Context,
    set_ref: str,
    databases: tuple[str, ...],
    all_databases: bool,
    target_db: str | None,
    clean: bool,
    jobs: int | None,
    continue_on_error: bool,
    resume: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Restore a backup set (or some of its databases) into the server."""
    settings = state(ctx).load({"restore.jobs": (jobs, "--jobs")}).settings
    request = RestoreRequest(
        set_ref=set_ref,
        databases=databases,
        all_databases=all_databases,
        target_db=target_db,
        clean=clean,
        jobs=settings.restore.jobs,
        dry_run=dry_run,
        continue_on_error=continue_on_error,
        resume=resume,
    )
    with open_runtime(settings) as runtime:
        report = run_restore(runtime, request, Progress.for_terminal(not as_json))
    click.echo(output.to_json(report.to_json()) if as_json else output.restore_text(report))
    if report.exit_code:
        sys.exit(report.exit_code)
