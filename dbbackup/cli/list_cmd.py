"""dbbackup list / dbbackup show"""

from __future__ import annotations

import click

from dbbackup import output
from dbbackup.actions.context import open_runtime
from dbbackup.actions.sets import list_sets as list_complete_sets
from dbbackup.actions.sets import resolve_set
from dbbackup.cli.state import state


@click.command("list")
@click.option("--database", "-d", metavar="DB", help="Only sets that hold this database.")
@click.option("--json", "as_json", is_flag=True, help="Print an array of set summaries.")
@click.pass_context
def list_sets(ctx: click.Context, database: str | None, as_json: bool) -> None:
    """List the complete backup sets of the instance, oldest first."""
    settings = state(ctx).load().settings
    with open_runtime(settings) as runtime:
        summaries = [s.to_json() for s in list_complete_sets(runtime, database=database)]
    click.echo(output.to_json(summaries) if as_json else output.sets_table(summaries))


@click.command()
@click.argument("set_ref", metavar="SET|latest")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@click.pass_context
def show(ctx: click.Context, set_ref: str, as_json: bool) -> None:
    """Show one backup set: databases, objects, sizes, consistency point."""
    settings = state(ctx).load().settings
    with open_runtime(settings) as runtime:
        manifest = resolve_set(runtime, set_ref)
    click.echo(manifest.to_json().decode() if as_json else output.manifest_text(manifest))
