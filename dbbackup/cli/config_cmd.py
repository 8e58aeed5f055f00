"""dbbackup config show|validate|init"""

from __future__ import annotations

from pathlib import Path

import click

from dbbackup import fsutil, output
from dbbackup.cli.state import state
from dbbackup.config import effective_values, render_sample
from dbbackup.errors import CannotCreateError


@click.group()
def config() -> None:
    """Inspect and check the configuration."""


@config.command("show")
@click.option("--sources", is_flag=True, help="Also say where each value came from.")
@click.pass_context
def show_config(ctx: click.Context, sources: bool) -> None:
    """Print every effective setting (secrets masked)."""
    loaded = state(ctx).load(setup_logging=False)
    click.echo(output.config_values_text(effective_values(loaded), with_sources=sources))


@config.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Check the configuration; exit 78 listing every problem."""
    loaded = state(ctx).load(setup_logging=False)
    files = ", ".join(str(f) for f in loaded.files) or "no files (defaults and environment only)"
    click.echo(f"configuration is valid: {files}")


@config.command()
@click.option(
    "--output",
    "-o",
    "output_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the sample to this file (0600) instead of standard output.",
)
@click.option("--force", is_flag=True, help="Replace an existing file.")
def init(output_path: Path | None, force: bool) -> None:
    """Print (or write) a commented sample configuration with every key."""
    sample = render_sample()
    if output_path is None:
        click.echo(sample, nl=False)
        return
    if output_path.exists() and not force:
        raise CannotCreateError(f"{output_path} already exists", hint="pass --force to replace it")
    fsutil.atomic_write_bytes(output_path, sample.encode())
    click.echo(f"wrote {output_path}")
