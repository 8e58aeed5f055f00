"""Finding backup sets, and keeping the catalog in step with the repository.

Manifests in the repository are the truth; the catalog is an index that can
always be rebuilt from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dbbackup import backupset
from dbbackup.actions.context import Runtime
from dbbackup.backupset import Manifest
from dbbackup.catalog import Catalog, SetSummary
from dbbackup.errors import DataError, InputMissingError, UsageError

log = logging.getLogger("dbbackup.sets")


def resolve_set(runtime: Runtime, ref: str, *, database: str | None = None) -> Manifest:
    """``latest``, a full set id, or an unambiguous prefix of one."""
    storage, instance = runtime.storage, runtime.instance
    ids = backupset.complete_set_ids(storage, instance)
    if ref == "latest":
        for set_id in reversed(ids):
            manifest = backupset.read_manifest(storage, instance, set_id)
            if database is None or any(db.name == database for db in manifest.databases):
                return manifest
        what = f" holding database {database!r}" if database else ""
        raise InputMissingError(
            f"no complete backup set{what} for instance {instance!r} in {storage.url}",
            hint="run 'dbbackup backup' first, or check --instance and storage.repository",
        )
    matches = [set_id for set_id in ids if set_id == ref] or [s for s in ids if s.startswith(ref)]
    if not matches:
        raise InputMissingError(
            f"no complete backup set {ref!r} for instance {instance!r} in {storage.url}",
            hint="run 'dbbackup list' to see the sets",
        )
    if len(matches) > 1:
        raise UsageError(f"{ref!r} matches several sets: {', '.join(matches)}", hint="give more of the id")
    return backupset.read_manifest(storage, instance, matches[0])


@dataclass
class SyncResult:
    added: int
    removed: int
    unreadable: list[str]


def _summaries(runtime: Runtime, set_ids: list[str]) -> tuple[list[SetSummary], list[str]]:
    summaries, unreadable = [], []
    for set_id in set_ids:
        try:
            manifest = backupset.read_manifest(runtime.storage, runtime.instance, set_id)
        except DataError as exc:
            log.warning("skipping %s: %s", set_id, exc.message)
            unreadable.append(set_id)
            continue
        summaries.append(SetSummary.from_json(manifest.summary()))
    return summaries, unreadable


def sync_catalog(runtime: Runtime) -> SyncResult:
    """Add sets the catalog lacks and drop those whose manifest is gone (incremental)."""
    catalog = runtime.catalog()
    on_disk = set(backupset.complete_set_ids(runtime.storage, runtime.instance))
    known = {s.id for s in catalog.list(instance=runtime.instance)}
    new_ids = sorted(on_disk - known)
    summaries, unreadable = _summaries(runtime, new_ids)
    for summary in summaries:
        catalog.upsert(summary)
    gone = known - on_disk
    for set_id in gone:
        catalog.remove(set_id)
    return SyncResult(added=len(summaries), removed=len(gone), unreadable=unreadable)


def rebuild_catalog(runtime: Runtime) -> SyncResult:
    """Recreate the instance's catalog entries from the manifests alone."""
    ids = backupset.complete_set_ids(runtime.storage, runtime.instance)
    summaries, unreadable = _summaries(runtime, ids)
    try:
        catalog = runtime.catalog()
    except DataError as exc:
        # The catalog is only a cache of the manifests: a corrupt one is replaced.
        log.warning("catalog %s is damaged (%s); recreating it", runtime.catalog_path(), exc.message)
        Catalog.discard(runtime.catalog_path())
        catalog = runtime.catalog()
    count = catalog.replace_all(summaries, instance=runtime.instance)
    return SyncResult(added=count, removed=0, unreadable=unreadable)


def list_sets(runtime: Runtime, *, database: str | None = None) -> list[SetSummary]:
    sync_catalog(runtime)
    return runtime.catalog().list(instance=runtime.instance, database=database)
