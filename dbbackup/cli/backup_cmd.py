"""dbbackup backup"""

from __future__ import annotations

import click

from dbbackup import output
from dbbackup.actions.backup import BackupRequest, run_backup
from dbbackup.actions.context import open_runtime
from dbbackup.actions.progress import Progress
from dbbackup.cli.state import state
from dbbackup.errors import ConfigError, UsageError
from dbbackup.pipeline.compress import ALGORITHMS, validate_level


@click.command()
@click.option(
    "--database",
    "-d",
    "databases",
    multiple=True,
    metavar="DB",
    help="Back up this database (repeatable). Default: connection.databases.",
)
@click.option(
    "--all",
    "all_databases",
    is_flag=True,
    help="Back up every database plus roles and tablespaces (the whole cluster).",
)
@click.option("--compression", type=click.Choice(ALGORITHMS), help="Compression algorithm (default: zstd).")
@click.option(
    "--compression-level",
    type=int,
    metavar="N",
    help="Compression level; valid ranges: zstd 1-19, gzip 1-9, lz4 0-16, xz 0-9.",
)
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Tables dumped in parallel (default: 2).")
@click.option("--json", "as_json", is_flag=True, help="Print the new set's summary as JSON.")
@click.pass_context
def backup(
    ctx: click.Context,
    databases: tuple[str, ...],
    all_databases: bool,
    compression: str | None,
    compression_level: int | None,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Dump databases into a new backup set (manifest written last)."""
    if compression_level is not None and compression is not None:
        validate_level(compression, compression_level)
    loaded = state(ctx).load(
        {
            "backup.compression": (compression, "--compression"),
            "backup.compression_level": (compression_level, "--compression-level"),
            "backup.jobs": (jobs, "--jobs"),
        }
    )
    settings = loaded.settings
    try:
        level = validate_level(settings.backup.compression, settings.backup.compression_level)
    except UsageError as exc:
        source = loaded.sources.get("backup.compression_level")
        if source is not None and source.kind == "flag":
            raise
        where = f" ({source.detail})" if source is not None and source.detail else ""
        raise ConfigError(f"backup.compression_level{where}: {exc.message}", hint=exc.hint) from exc
    request = BackupRequest(
        databases=databases,
        all_databases=all_databases,
        compression=settings.backup.compression,
        compression_level=level,
        jobs=settings.backup.jobs,
    )
    with open_runtime(settings) as runtime:
        manifest = run_backup(runtime, request, Progress.for_terminal(not as_json))
    click.echo(output.to_json(manifest.summary()) if as_json else output.backup_text(manifest))
