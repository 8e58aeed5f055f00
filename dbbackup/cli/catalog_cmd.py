"""dbbackup catalog rebuild|sync"""

from __future__ import annotations

import click

from dbbackup.actions.context import open_runtime
from dbbackup.actions.sets import rebuild_catalog, sync_catalog
from dbbackup.cli.state import state


@click.group()
def catalog() -> None:
    """Maintain the SQLite index of backup sets (always rebuildable from manifests)."""


@catalog.command()
@click.pass_context
def rebuild(ctx: click.Context) -> None:
    """Recreate the instance's catalog entries from the manifests in the repository."""
    settings = state(ctx).load().settings
    with open_runtime(settings) as runtime:
        result = rebuild_catalog(runtime)
    click.echo(f"catalog rebuilt: {result.added} set(s)")
    for set_id in result.unreadable:
        click.echo(f"warning: skipped unreadable manifest of {set_id}", err=True)


@catalog.command()
@click.pass_context
def sync(ctx: click.Context) -> None:
    """Add new sets to the catalog and drop vanished ones (reads only new manifests)."""
    settings = state(ctx).load().settings
    with open_runtime(settings) as runtime:
        result = sync_catalog(runtime)
    click.echo(f"catalog synced: {result.added} added, {result.removed} removed")
