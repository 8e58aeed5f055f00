"""dbbackup configuration: schema, loading with provenance, validation.

``load_config`` merges defaults, TOML files, ``DBBACKUP_*`` variables and flags into
frozen ``Settings`` and records where each value came from.
"""

from dbbackup.config.duration import DurationError, format_duration, parse_duration
from dbbackup.config.loader import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_INSTANCE,
    INSTANCE_NAME,
    LoadedConfig,
    Source,
    load_config,
)
from dbbackup.config.model import (
    BackupSettings,
    CatalogSettings,
    ConnectionSettings,
    LogSettings,
    RestoreSettings,
    Settings,
    StorageSettings,
    schema_keys,
    schema_sections,
)
from dbbackup.config.render import effective_values, render_sample
from dbbackup.config.schema import KeySpec, SectionSpec

__all__ = [
    "DEFAULT_CONFIG_DIR",
    "DEFAULT_INSTANCE",
    "INSTANCE_NAME",
    "BackupSettings",
    "CatalogSettings",
    "ConnectionSettings",
    "DurationError",
    "KeySpec",
    "LoadedConfig",
    "LogSettings",
    "RestoreSettings",
    "SectionSpec",
    "Settings",
    "Source",
    "StorageSettings",
    "effective_values",
    "format_duration",
    "load_config",
    "parse_duration",
    "render_sample",
    "schema_keys",
    "schema_sections",
]
