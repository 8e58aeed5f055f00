"""The cleanup verb: apply the retention policy to an instance's backup sets.

The manifests in the repository are read (they are the truth; the catalog
may lag behind), ``dbbackup.retention`` decides, and each set to go is
deleted in an order and a way that never leaves a listed set unrestorable:

1. its ``manifest.json`` is removed first and the removal made durable, so
   from that moment the set is incomplete and no longer listed;
2. then its objects;
3. then its catalog entry (kept in the run history, see ``Catalog.expire``).

A set whose manifest cannot be read is kept: what cannot be understood is
not deleted. Directories of sets that never got a manifest (a crashed
backup, an interrupted deletion) are removed once they are older than any
backup could still be running (``backup.timeout`` plus a margin).
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dbbackup import backupset, fsutil
from dbbackup.actions.context import Runtime
from dbbackup.backupset import MANIFEST, SET_ID_RE
from dbbackup.errors import DataError, InputMissingError, InternalError
from dbbackup.notify import notify
from dbbackup.retention import Decision, RetentionPolicy, SetInfo, decide, deletion_order, missing_parents
from dbbackup.storage import LocalStorage, Storage

log = logging.getLogger("dbbackup.cleanup")

# A backup started longer than its deadline plus this ago cannot still be writing.
LEFTOVER_MARGIN = timedelta(hours=1)
PROGRESS_EXTENSION_USEC = 10 * 60 * 1_000_000
_DELETE_ATTEMPTS = 3


@dataclass
class CleanupReport:
    instance: str
    policy: RetentionPolicy
    dry_run: bool
    decisions: list[Decision] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # set id -> why it is kept
    missing_parents: dict[str, str] = field(default_factory=dict)  # set id -> absent parent
    deleted: list[str] = field(default_factory=list)  # in deletion order (planned, with dry_run)
    leftovers: list[str] = field(default_factory=list)  # incomplete set directories removed

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def expired(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    def to_json(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "dry_run": self.dry_run,
            "policy": self.policy.to_json(),
            "decisions": [d.to_json() for d in self.decisions],
            "unreadable": dict(self.unreadable),
            "missing_parents": dict(self.missing_parents),
            "deleted": list(self.deleted),
            "leftovers": list(self.leftovers),
        }


def run_cleanup(runtime: Runtime, *, dry_run: bool, now: datetime | None = None) -> CleanupReport:
    """Apply the configured retention policy to ``runtime``'s instance.

    With ``dry_run`` nothing is touched and the report says what would go.
    Does not take the instance lock: the backup calls this while holding it.
    """
    moment = now or datetime.now(UTC)
    settings = runtime.settings
    policy = RetentionPolicy.from_settings(settings.retention)
    report = CleanupReport(instance=runtime.instance, policy=policy, dry_run=dry_run)
    infos = _read_sets(runtime, report)
    report.decisions = decide(infos, policy, now=moment)
    for set_id, why in report.unreadable.items():
        report.decisions.append(Decision(set_id, _time_of_id(set_id) or moment, True, (why,)))
    report.decisions.sort(key=lambda d: (d.time, d.set_id), reverse=True)
    report.missing_parents = missing_parents(infos)
    for set_id, parent in report.missing_parents.items():
        log.warning("set %s depends on %s, which is not in the repository", set_id, parent)
    order = deletion_order(infos, report.decisions)
    leftovers = _leftovers(runtime, moment, float(settings.backup.timeout))
    if dry_run:
        report.deleted, report.leftovers = order, leftovers
        return report
    for position, set_id in enumerate(order, start=1):
        # Each deletion proves progress to systemd, which extends the unit's start timeout.
        notify(
            STATUS=f"cleanup {runtime.instance}: deleting {set_id} ({position}/{len(order)})",
            EXTEND_TIMEOUT_USEC=PROGRESS_EXTENSION_USEC,
        )
        delete_set(runtime, set_id)
        report.deleted.append(set_id)
        log.info(
            "deleted backup set %s (retention: %s)",
            set_id,
            policy.describe(),
            extra={"event": "set_deleted", "backup_id": set_id},
        )
    for set_id in leftovers:
        _delete_prefix(runtime.storage, backupset.set_prefix(runtime.instance, set_id))
        runtime.catalog().expire(set_id)  # a deletion interrupted before its catalog update
        report.leftovers.append(set_id)
        log.info(
            "removed incomplete set directory %s",
            set_id,
            extra={"event": "leftover_removed", "backup_id": set_id},
        )
    return report


def _read_sets(runtime: Runtime, report: CleanupReport) -> list[SetInfo]:
    infos: list[SetInfo] = []
    for set_id in backupset.complete_set_ids(runtime.storage, runtime.instance):
        try:
            manifest = backupset.read_manifest(runtime.storage, runtime.instance, set_id)
        except InputMissingError:
            continue  # deleted since listing (another cleanup): nothing left to decide
        except DataError as exc:
            report.unreadable[set_id] = f"manifest unreadable, kept: {exc.message}"
            log.warning("keeping %s: its manifest cannot be read: %s", set_id, exc.message)
            continue
        moment = _finished_time(manifest.finished_at) or _time_of_id(set_id)
        if moment is None:
            report.unreadable[set_id] = f"no usable time (finished_at {manifest.finished_at!r}), kept"
            continue
        infos.append(SetInfo(id=set_id, time=moment, parent=manifest.parent))
    return infos


def _finished_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _time_of_id(set_id: str) -> datetime | None:
    return backupset.parse_set_time(set_id)


def _leftovers(runtime: Runtime, now: datetime, backup_timeout: float) -> list[str]:
    """Incomplete set directories that no running backup can still own."""
    cutoff = now - timedelta(seconds=backup_timeout) - LEFTOVER_MARGIN
    found = []
    for name in runtime.storage.children(runtime.instance):
        started = _time_of_id(name) if SET_ID_RE.match(name) else None
        if started is None or started >= cutoff:
            continue
        if not runtime.storage.exists(backupset.object_key(runtime.instance, name, MANIFEST)):
            found.append(name)
    return found


def delete_set(runtime: Runtime, set_id: str) -> None:
    """Delete one set: manifest (durably), then objects, then the catalog entry."""
    storage, instance = runtime.storage, runtime.instance
    _delete_object(storage, backupset.object_key(instance, set_id, MANIFEST))
    _delete_prefix(storage, backupset.set_prefix(instance, set_id))
    runtime.catalog().expire(set_id)


def _delete_object(storage: Storage, key: str) -> None:
    delete = getattr(storage, "delete", None)
    if callable(delete):
        delete(key)
        return
    if not isinstance(storage, LocalStorage):
        raise InternalError(f"the repository {storage.url} cannot delete single objects")
    path = storage.local_path(key)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return  # already gone: another cleanup got there first
    except OSError as exc:
        raise fsutil.os_error_to_failure(exc, "delete", path) from exc
    try:
        fsutil.fsync_dir(path.parent)
    except FileNotFoundError:
        return  # another cleanup removed the whole set meanwhile
    except OSError as exc:
        # Without this the set could come back complete after a crash, objects gone.
        raise fsutil.os_error_to_failure(exc, "sync the directory of", path) from exc


def _delete_prefix(storage: Storage, prefix: str) -> None:
    for attempt in range(1, _DELETE_ATTEMPTS + 1):
        try:
            storage.delete_prefix(prefix)
            break
        except OSError as exc:
            # Another cleanup deleting the same set makes entries vanish under us, or
            # appear non-empty for a moment; once it is done there is nothing left to do.
            racing = isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOTEMPTY
            if racing and isinstance(storage, LocalStorage) and not storage.local_path(prefix).exists():
                return
            if not racing or attempt == _DELETE_ATTEMPTS:
                raise fsutil.os_error_to_failure(exc, "delete", f"{storage.url}/{prefix}") from exc
    if isinstance(storage, LocalStorage):
        parent = storage.local_path(prefix).parent
        try:
            fsutil.fsync_dir(parent)
        except OSError as exc:
            raise fsutil.os_error_to_failure(exc, "sync the directory", parent) from exc
