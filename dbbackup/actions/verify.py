"""The verify verb: re-read every object of a set and prove its checksum."""

from __future__ import annotations

import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dbbackup import backupset, keys, objects
from dbbackup.actions.context import Runtime
from dbbackup.actions.progress import Progress
from dbbackup.actions.sets import resolve_set
from dbbackup.backupset import Manifest, StoredObject
from dbbackup.errors import DataError, DbBackupError
from dbbackup.pipeline.crypto import Identity

log = logging.getLogger("dbbackup.verify")


@dataclass
class ObjectCheck:
    key: str
    ok: bool
    error: str = ""


@dataclass
class VerifyReport:
    set_id: str
    mode: str  # quick | checksum | deep
    objects: int = 0
    bytes: int = 0
    duration_sec: float = 0.0
    failures: list[ObjectCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def _check(
    runtime: Runtime,
    manifest: Manifest,
    obj: StoredObject,
    mode: str,
    progress: Progress,
    identities: list[Identity],
) -> ObjectCheck:
    key = backupset.object_key(manifest.instance, manifest.id, obj.key)
    try:
        if mode == "quick":
            size = runtime.storage.size(key)
            if size != obj.stored_bytes:
                raise DataError(f"{key}: stored size {size} bytes, manifest says {obj.stored_bytes}")
        else:
            objects.verify_stored(runtime.storage, key, obj, deep=mode == "deep", identities=identities)
        progress.add_bytes(obj.stored_bytes)
        return ObjectCheck(key, True)
    except DbBackupError as exc:
        return ObjectCheck(key, False, exc.message)


def _unlock(runtime: Runtime, manifest: Manifest, mode: str) -> list[Identity]:
    """Authenticate an encrypted set's manifest when an identity is at hand (deep: required)."""
    sealed = any(o.encryption for o in manifest.all_objects())
    identities = runtime.identities() if sealed else []
    authenticated = keys.unlock_set(
        runtime.storage,
        manifest,
        manifest.all_objects(),
        identities,
        need_identities=mode == "deep",
        require_encryption=runtime.settings.encryption.require,
    )
    if sealed and not authenticated:
        log.warning(
            "verify: no identity opens %s: checksums are checked, the manifest's authenticity is not",
            manifest.id,
            extra={"event": "verify_unauthenticated", "backup_id": manifest.id},
        )
    return identities


def run_verify(runtime: Runtime, ref: str, *, mode: str, jobs: int, progress: Progress) -> VerifyReport:
    begun = time.monotonic()
    manifest = resolve_set(runtime, ref)
    report = VerifyReport(set_id=manifest.id, mode=mode)
    stored = manifest.all_objects()
    progress.set_phase(f"verifying {manifest.id}")
    try:
        identities = _unlock(runtime, manifest, mode)
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="verify") as pool:
            checks = list(
                pool.map(
                    lambda o: contextvars.copy_context().run(
                        _check, runtime, manifest, o, mode, progress, identities
                    ),
                    stored,
                )
            )
    finally:
        progress.close()
    report.objects = len(stored)
    report.bytes = sum(o.stored_bytes for o in stored)
    report.failures = [c for c in checks if not c.ok]
    report.duration_sec = round(time.monotonic() - begun, 3)
    runtime.catalog().record_verification(
        manifest.id,
        instance=manifest.instance,
        databases=[db.name for db in manifest.databases],
        ok=report.ok,
        mode=mode,
        finished_at=datetime.now(UTC),
    )
    for failure in report.failures:
        log.error("verify: %s", failure.error, extra={"event": "verify_failed", "backup_id": manifest.id})
    if report.ok:
        log.info(
            "verify: %d objects of %s are intact",
            report.objects,
            manifest.id,
            extra={"event": "verify_succeeded", "backup_id": manifest.id},
        )
    return report
