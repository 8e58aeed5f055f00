"""dbbackup metrics"""

from __future__ import annotations

from pathlib import Path

import click

from dbbackup.cli.check_cmd import load_instances_strict
from dbbackup.cli.state import state
from dbbackup.metrics import Target, render, write_textfile


@click.command()
@click.option(
    "--textfile",
    "directory",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write DIR/dbbackup.prom atomically (node_exporter's textfile collector) instead of printing.",
)
@click.pass_context
def metrics(ctx: click.Context, directory: Path | None) -> None:
    """Print the Prometheus metrics of every instance, as /metrics of dbbackup serve does."""
    targets = [Target.from_settings(s) for s in load_instances_strict(state(ctx))]
    if directory is None:
        click.echo(render(targets).decode(), nl=False)
        return
    write_textfile(directory, targets)
