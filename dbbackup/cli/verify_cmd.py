"""dbbackup verify"""

from __future__ import annotations

import click

from dbbackup import output
from dbbackup.actions.context import open_runtime
from dbbackup.actions.progress import Progress
from dbbackup.actions.verify import run_verify
from dbbackup.cli.state import state
from dbbackup.errors import DataError


@click.command()
@click.argument("set_ref", metavar="SET|latest")
@click.option(
    "--quick", "mode", flag_value="quick", help="Only check that every object exists with its size."
)
@click.option("--deep", "mode", flag_value="deep", help="Also decompress every object end to end.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Objects checked in parallel.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def verify(ctx: click.Context, set_ref: str, mode: str | None, jobs: int, as_json: bool) -> None:
    """Re-read a backup set and prove every object's sha256 (exit 65 on damage)."""
    settings = state(ctx).load().settings
    with open_runtime(settings) as runtime:
        report = run_verify(
            runtime,
            set_ref,
            mode=mode or "checksum",
            jobs=jobs,
            progress=Progress.for_terminal(not as_json),
        )
    click.echo(output.to_json(report.to_json()) if as_json else output.verify_text(report))
    if not report.ok:
        first = report.failures[0]
        raise DataError(
            f"backup set {report.set_id} is damaged: {first.error}",
            hint="restore from another set and investigate the storage",
        )
