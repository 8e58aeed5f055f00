"""What the global options hand to every command, and the one way commands load settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from dbbackup import log as dblog
from dbbackup.config import LoadedConfig, load_config


@dataclass
class CliState:
    config_file: Path | None
    instance: str | None
    log_level: str | None
    log_format: str | None

    def load(
        self, overrides: dict[str, tuple[Any, str]] | None = None, *, setup_logging: bool = True
    ) -> LoadedConfig:
        merged: dict[str, tuple[Any, str]] = {
            "log.level": (self.log_level, "--log-level"),
            "log.format": (self.log_format, "--log-format"),
        }
        merged.update(overrides or {})
        loaded = load_config(
            config_file=self.config_file,
            instance=self.instance,
            overrides=merged,
            environ=os.environ,
        )
        if setup_logging:
            settings = loaded.settings
            dblog.setup_logging(
                level=settings.log.level,
                fmt=settings.log.format,
                instance=settings.instance,
                log_file=Path(settings.log.file) if settings.log.file else None,
            )
        return loaded


def state(ctx: click.Context) -> CliState:
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj
