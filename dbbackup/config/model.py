"""The settings dataclasses; each field declaration is also the key's schema entry.

To add a key, add one ``setting(default, kind, doc)`` field to its section class. To
add a section, write its class and add one field to ``Settings`` whose metadata is
``section_doc(doc)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dbbackup.config.kinds import (
    Boolean,
    DatabaseRecipients,
    Duration,
    FilePath,
    Integer,
    Location,
    PerDatabase,
    Recipients,
    Text,
    TextList,
    TimeZone,
)
from dbbackup.config.schema import KeySpec, Schema, SectionSpec, section_doc, setting

PORT = Integer(0, 65535)
ENGINES = ("postgres", "mysql")
COMPRESSIONS = ("zstd", "gzip", "lz4", "xz", "none")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ConnectionSettings:
    host: str = setting(
        "", Text(), "Host or socket directory; empty = postgres /run/postgresql, mysql localhost."
    )
    port: int = setting(0, PORT, "TCP port; 0 = the engine's default (5432 or 3306).")
    user: str = setting("", Text(), "User to connect as; empty = the client's default.")
    password: str = setting(
        "",
        Text(),
        "Password (prefer password_file); a file holding it must be mode 0600 or 0640.",
        secret=True,
    )
    password_file: str = setting("", FilePath(), "File whose first line is the password.")
    maintenance_db: str = setting(
        "", Text(), "Database used to list databases; empty = postgres: postgres, mysql: none."
    )
    databases: tuple[str, ...] = setting(
        ["*"], TextList(non_empty=True), 'Databases to back up; "*" = all databases and globals.'
    )
    exclude: tuple[str, ...] = setting([], TextList(), 'Databases that "*" leaves out.')
    sslmode: str = setting("prefer", Text(SSLMODES), "TLS mode, with libpq's meanings.")
    connect_timeout: float = setting("10s", Duration(), "Longest wait for a connection to open.")
    statement_timeout: float = setting("0", Duration(), "Longest statement in dump sessions; 0 = no limit.")
    lock_timeout: float = setting("60s", Duration(), "Longest wait for a lock before failing.")
    idle_timeout: float = setting("10min", Duration(), "Longest idle-in-transaction time.")
    direct_host: str = setting(
        "", Text(), "Host for dumps and restores when host is a transaction pooler; empty = host."
    )
    direct_port: int = setting(0, PORT, "Port for direct_host; 0 = port.")
    stall_timeout: float = setting(
        "10min", Duration(), "A data stream that moves no byte for this long is cut (exit 69); 0 = never."
    )


@dataclass(frozen=True)
class StorageSettings:
    repository: str = setting("/var/lib/dbbackup/repo", Location(), "Where backup sets are kept.")


@dataclass(frozen=True)
class BackupSettings:
    compression: str = setting("zstd", Text(COMPRESSIONS), "Compression of stored objects.")
    compression_level: int | None = setting(
        None,
        Integer(optional=True),
        "Compression level; unset = the algorithm's default.",
        example=3,
    )
    timezone: str = setting("local", TimeZone(), "Zone of the timestamps in backup set names.")
    jobs: int = setting(2, Integer(1), "Dumps run in parallel.")
    timeout: float = setting("24h", Duration(), "Deadline for one backup run.")
    non_transactional: str = setting(
        "warn",
        Text(("warn", "lock")),
        "MySQL: tables without transactions (MyISAM, Aria): warn, or hold the read lock while dumped.",
    )
    lock_wait: float = setting(
        "10min", Duration(), "How long a backup waits for another backup of the instance; then exit 75."
    )


@dataclass(frozen=True)
class RestoreSettings:
    jobs: int = setting(2, Integer(1), "Restore workers run in parallel.")
    timeout: float = setting("24h", Duration(), "Deadline for one restore run.")


@dataclass(frozen=True)
class HooksSettings:
    before_backup: tuple[str, ...] = setting(
        [], TextList(), "Command (argv list, no shell) run before a backup; failing aborts it."
    )
    after_backup: tuple[str, ...] = setting([], TextList(), "Command run after every backup.")
    on_success: tuple[str, ...] = setting([], TextList(), "Command run after a successful backup.")
    on_failure: tuple[str, ...] = setting([], TextList(), "Command run after a failed backup.")
    before_restore: tuple[str, ...] = setting(
        [], TextList(), "Command run before a restore; failing aborts it."
    )
    after_restore: tuple[str, ...] = setting([], TextList(), "Command run after every restore.")
    on_restore_success: tuple[str, ...] = setting(
        [], TextList(), "Command run after a successful restore."
    )
    on_restore_failure: tuple[str, ...] = setting([], TextList(), "Command run after a failed restore.")
    timeout: float = setting("5min", Duration(), "Deadline for each hook command; it is killed after.")


@dataclass(frozen=True)
class LogSettings:
    level: str = setting("info", Text(LOG_LEVELS), "Least severe message logged.")
    format: str = setting("text", Text(LOG_FORMATS), "Log line format.")
    file: str = setting("", FilePath(), "Also log to this file; empty = none.")


@dataclass(frozen=True)
class CatalogSettings:
    path: str = setting("", FilePath(), "SQLite catalog of backup sets; empty = <repository>/catalog.sqlite.")


@dataclass(frozen=True)
class RetentionSettings:
    keep_last: int = setting(0, Integer(0), "Keep the newest N sets; 0 = no such rule.")
    keep_within: float = setting(
        "0", Duration(), "Keep every set finished within this time before now; 0 = no such rule."
    )
    keep_daily: int = setting(0, Integer(0), "Keep the newest set of each of the last N days with a set.")
    keep_weekly: int = setting(0, Integer(0), "Keep the newest set of each of the last N ISO weeks with one.")
    keep_monthly: int = setting(0, Integer(0), "Keep the newest set of each of the last N months with a set.")
    keep_yearly: int = setting(0, Integer(0), "Keep the newest set of each of the last N years with a set.")
    min_keep: int = setting(
        1, Integer(1), "Never keep fewer complete sets than this, whatever the rules say."
    )
    auto_cleanup: bool = setting(
        False, Boolean(), "Apply the policy after each successful backup (the units run cleanup anyway)."
    )


@dataclass(frozen=True)
class MonitoringSettings:
    max_backup_age: float = setting(
        "26h", Duration(), "dbbackup check is CRITICAL when the newest backup is older than this."
    )
    alert_webhook: str = setting(
        "",
        Text(),
        "http(s) URL that receives a JSON alert (POST) when a backup is overdue or fails; empty = none.",
        secret=True,
    )
    alert_timeout: float = setting("10s", Duration(), "Longest wait for the webhook to answer, per attempt.")


@dataclass(frozen=True)
class ServerSettings:
    listen: str = setting("127.0.0.1", Text(), "Address dbbackup serve listens on (IPv4 or IPv6).")
    port: int = setting(9187, PORT, "TCP port of dbbackup serve; 0 = any free port.")


@dataclass(frozen=True)
class EncryptionSettings:
    recipients: tuple[str, ...] = setting(
        [], Recipients(), "age recipients (age1...) or recipient files every object is encrypted to."
    )
    identity_file: str = setting(
        "", FilePath(), "age identity file (AGE-SECRET-KEY-1...) that opens sets for restore and verify."
    )
    passphrase_file: str = setting(
        "", FilePath(), "Encrypt to the passphrase on this file's first line instead (scrypt); mode 0600."
    )
    require: bool = setting(False, Boolean(), "Refuse to store anything unencrypted (exit 78).")
    databases: Mapping[str, DatabaseRecipients] = setting(
        {}, PerDatabase(), "Per-database recipients: [encryption.databases.NAME] recipients = [...]."
    )


@dataclass(frozen=True)
class Settings:
    instance: str
    engine: str = setting("postgres", Text(ENGINES), "postgres (PostgreSQL) or mysql (MySQL, MariaDB).")
    connection: ConnectionSettings = field(
        default_factory=ConnectionSettings, metadata=section_doc("How to reach the server.")
    )
    storage: StorageSettings = field(
        default_factory=StorageSettings, metadata=section_doc("Where backups are kept.")
    )
    backup: BackupSettings = field(
        default_factory=BackupSettings, metadata=section_doc("How backups are taken.")
    )
    restore: RestoreSettings = field(
        default_factory=RestoreSettings, metadata=section_doc("How restores run.")
    )
    hooks: HooksSettings = field(
        default_factory=HooksSettings, metadata=section_doc("Commands run around backups and restores.")
    )
    log: LogSettings = field(default_factory=LogSettings, metadata=section_doc("Logging."))
    catalog: CatalogSettings = field(
        default_factory=CatalogSettings, metadata=section_doc("The index of backup sets.")
    )
    retention: RetentionSettings = field(
        default_factory=RetentionSettings, metadata=section_doc("Which backup sets dbbackup cleanup keeps.")
    )
    monitoring: MonitoringSettings = field(
        default_factory=MonitoringSettings,
        metadata=section_doc("Backup age limits and alerts (dbbackup check)."),
    )
    server: ServerSettings = field(
        default_factory=ServerSettings, metadata=section_doc("The HTTP endpoints of dbbackup serve.")
    )
    encryption: EncryptionSettings = field(
        default_factory=EncryptionSettings,
        metadata=section_doc("age encryption of stored objects, per database if needed."),
    )

    @property
    def catalog_path(self) -> Path:
        """The catalog file: ``catalog.path``, or ``<repository>/catalog.sqlite``."""
        if self.catalog.path:
            return Path(self.catalog.path)
        return Path(self.storage.repository) / "catalog.sqlite"


SCHEMA = Schema.from_dataclass(Settings)


def schema_keys() -> list[KeySpec]:
    """Every key in declaration order (top-level keys first), for docs and tools."""
    return list(SCHEMA.keys)


def schema_sections() -> list[SectionSpec]:
    """Every section with its doc string and keys, for docs and tools."""
    return list(SCHEMA.sections)
