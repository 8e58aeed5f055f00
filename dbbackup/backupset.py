"""Backup sets: their names, their manifest, and how they sit in a repository.

A set lives under ``<instance>/<set-id>/``. Its ``manifest.json`` is written
last and atomically; a set without one is incomplete and never listed.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dbbackup import __version__
from dbbackup.errors import ConfigError, DataError, InputMissingError
from dbbackup.storage.base import Storage

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SET_ID_RE = re.compile(r"^(\d{8}T\d{6})([+-]\d{4})-(full|diff|incr)-([0-9a-f]{8})$")


def resolve_zone(name: str) -> tzinfo:
    if name == "local":
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local
    if name.lower() == "utc":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"backup.timezone: unknown time zone {name!r}",
            hint="use local, utc or an IANA name such as Europe/Berlin",
        ) from exc


def now_in(zone: tzinfo) -> datetime:
    return datetime.now(UTC).astimezone(zone)


def iso(moment: datetime) -> str:
    # Milliseconds: sets started within the same second still order by time.
    return moment.isoformat(timespec="milliseconds")


def new_set_id(started: datetime, kind: str = "full") -> str:
    """``20261127T143000+0100-full-1a2b3c4d``: local wall time with its offset."""
    stamp = started.strftime("%Y%m%dT%H%M%S%z")
    return f"{stamp[:15]}{stamp[15:]}-{kind}-{secrets.token_hex(4)}"


def parse_set_time(set_id: str) -> datetime | None:
    match = SET_ID_RE.match(set_id)
    if not match:
        return None
    return datetime.strptime(match.group(1) + match.group(2), "%Y%m%dT%H%M%S%z")


def path_component(name: str) -> str:
    """A database name as one safe path component (any byte of a name is allowed)."""
    encoded = quote(name, safe="-_@+,=")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    return encoded


@dataclass
class TableRef:
    schema: str
    name: str
    columns: list[str]


@dataclass
class StoredObject:
    key: str  # relative to the set's prefix
    role: str  # globals | pre-data | table-data | sequences | large-objects | post-data
    stored_bytes: int
    plain_bytes: int
    sha256: str
    compression: str
    table: TableRef | None = None
    encryption: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredObject:
        table = data.get("table")
        return cls(
            key=str(data["key"]),
            role=str(data["role"]),
            stored_bytes=int(data["stored_bytes"]),
            plain_bytes=int(data["plain_bytes"]),
            sha256=str(data["sha256"]),
            compression=str(data["compression"]),
            table=TableRef(**table) if table else None,
            encryption=data.get("encryption"),
        )


@dataclass
class DatabaseEntry:
    name: str
    directory: str
    properties: dict[str, Any] = field(default_factory=dict)
    objects: list[StoredObject] = field(default_factory=list)

    def objects_with_role(self, role: str) -> list[StoredObject]:
        return [o for o in self.objects if o.role == role]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatabaseEntry:
        return cls(
            name=str(data["name"]),
            directory=str(data["directory"]),
            properties=dict(data.get("properties") or {}),
            objects=[StoredObject.from_dict(o) for o in data["objects"]],
        )


@dataclass
class Manifest:
    id: str
    instance: str
    engine: str
    kind: str
    started_at: str
    finished_at: str
    timezone: str
    server_version: str
    server_host: str
    compression: str
    compression_level: int
    cluster: bool
    consistency: dict[str, Any] = field(default_factory=dict)
    globals: list[StoredObject] = field(default_factory=list)
    databases: list[DatabaseEntry] = field(default_factory=list)
    parent: str | None = None
    encrypted: bool = False
    server_version_num: int = 0
    tools_major: int = 0
    client_host: str = field(default_factory=socket.gethostname)
    tool_version: str = __version__
    format_version: int = FORMAT_VERSION

    def all_objects(self) -> list[StoredObject]:
        objects = list(self.globals)
        for db in self.databases:
            objects.extend(db.objects)
        return objects

    def database(self, name: str) -> DatabaseEntry:
        for db in self.databases:
            if db.name == name:
                return db
        names = ", ".join(db.name for db in self.databases) or "none"
        raise InputMissingError(f"backup set {self.id} holds no database {name!r}", hint=f"it holds: {names}")

    @property
    def stored_bytes(self) -> int:
        return sum(o.stored_bytes for o in self.all_objects())

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "instance": self.instance,
            "kind": self.kind,
            "engine": self.engine,
            "databases": [db.name for db in self.databases],
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "stored_bytes": self.stored_bytes,
            "encrypted": self.encrypted,
            "location": f"{self.instance}/{self.id}",
        }

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, *, where: str) -> Manifest:
        try:
            data = json.loads(raw)
            version = int(data["format_version"])
            if version > FORMAT_VERSION:
                raise DataError(
                    f"{where}: manifest format {version} is newer than this dbbackup understands",
                    hint="upgrade dbbackup to read this backup set",
                )
            return cls(
                id=str(data["id"]),
                instance=str(data["instance"]),
                engine=str(data["engine"]),
                kind=str(data["kind"]),
                started_at=str(data["started_at"]),
                finished_at=str(data["finished_at"]),
                timezone=str(data["timezone"]),
                server_version=str(data["server_version"]),
                server_host=str(data["server_host"]),
                compression=str(data["compression"]),
                compression_level=int(data["compression_level"]),
                cluster=bool(data["cluster"]),
                consistency=dict(data.get("consistency") or {}),
                globals=[StoredObject.from_dict(o) for o in data.get("globals", [])],
                databases=[DatabaseEntry.from_dict(d) for d in data["databases"]],
                parent=data.get("parent"),
                encrypted=bool(data.get("encrypted", False)),
                server_version_num=int(data.get("server_version_num", 0)),
                tools_major=int(data.get("tools_major", 0)),
                client_host=str(data.get("client_host", "")),
                tool_version=str(data.get("tool_version", "")),
                format_version=version,
            )
        except DataError:
            raise
        # A damaged or hostile file can fail anywhere: wrong types (TypeError,
        # AttributeError), 1e999 for a number (OverflowError), absurd nesting.
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
            raise DataError(
                f"{where}: manifest is malformed ({exc.__class__.__name__}: {exc})",
                hint="the set cannot be trusted; use another backup set",
            ) from exc


def set_prefix(instance: str, set_id: str) -> str:
    return f"{instance}/{set_id}"


def object_key(instance: str, set_id: str, relative: str) -> str:
    return str(PurePosixPath(instance, set_id, relative))


def write_manifest(storage: Storage, manifest: Manifest) -> None:
    """The commit point of a backup: after this the set exists."""
    with storage.writer(object_key(manifest.instance, manifest.id, MANIFEST)) as handle:
        handle.write(manifest.to_json())


def read_manifest(storage: Storage, instance: str, set_id: str) -> Manifest:
    key = object_key(instance, set_id, MANIFEST)
    if not storage.exists(key):
        raise InputMissingError(
            f"backup set {instance}/{set_id} not found (or incomplete: no manifest) in {storage.url}",
            hint="run 'dbbackup list' to see the complete sets",
        )
    with storage.reader(key) as handle:
        raw = handle.read()
    manifest = Manifest.from_json(raw, where=key)
    if manifest.id != set_id or manifest.instance != instance:
        raise DataError(
            f"{key}: manifest describes {manifest.instance}/{manifest.id}, not {instance}/{set_id}",
            hint="the set was moved or tampered with; use another backup set",
        )
    return manifest


def complete_set_ids(storage: Storage, instance: str) -> list[str]:
    """Sets of an instance that have a manifest, oldest first."""
    found = []
    for name in storage.children(instance):
        if SET_ID_RE.match(name) and storage.exists(object_key(instance, name, MANIFEST)):
            found.append(name)
    return sorted(found, key=lambda n: (parse_set_time(n) or datetime.min.replace(tzinfo=UTC), n))


def age_of(manifest: Manifest) -> timedelta:
    finished = datetime.fromisoformat(manifest.finished_at)
    return datetime.now(UTC) - finished
