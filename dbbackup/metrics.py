"""Prometheus metrics read from the catalog, per instance and database.

One scrape opens each instance's catalog, runs a handful of indexed queries
and closes it again; nothing is kept between scrapes but a small cache of
per-database sizes taken from manifests (a manifest never changes once
written). ``dbbackup serve`` answers ``/metrics`` with :func:`render`, and
``dbbackup metrics --textfile DIR`` writes the same text for node_exporter.

Series (labels ``instance`` and ``database``):

``dbbackup_last_success_timestamp_seconds``  end of the newest backup
``dbbackup_backup_age_seconds``              now minus that
``dbbackup_last_duration_seconds``           how long the newest backup took
``dbbackup_last_size_bytes``                 what the database takes in the newest set
``dbbackup_backups_total{result}``           backup runs, ``success`` or ``failure``
``dbbackup_verify_last_success_timestamp_seconds``  newest passed checksum/deep verify
``dbbackup_sets{instance}``                  complete sets in the catalog
``dbbackup_catalog_up{instance}``            1 if the catalog could be read

A failed run is counted under the databases it was asked for (``*`` for
all of them), since it may have failed before it listed them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from dbbackup import backupset, fsutil
from dbbackup.catalog import Catalog, SetSummary
from dbbackup.errors import CannotCreateError, DbBackupError
from dbbackup.storage import Storage, open_storage

log = logging.getLogger("dbbackup.metrics")

TEXTFILE_NAME = "dbbackup.prom"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_BUSY_TIMEOUT = 5.0
_SIZE_CACHE_ENTRIES = 1024


@dataclass(frozen=True)
class Target:
    """One instance to report on: where its catalog and its sets are."""

    instance: str
    catalog_path: Path
    storage: Storage

    @classmethod
    def from_settings(cls, settings: Any) -> Target:
        return cls(
            instance=str(settings.instance),
            catalog_path=Path(settings.catalog_path),
            storage=open_storage(settings.storage.repository),
        )


@dataclass
class DatabaseStatus:
    database: str
    last_success: float | None = None  # epoch seconds
    last_duration: float | None = None
    last_size: int | None = None
    last_set_id: str | None = None
    successes: int = 0
    failures: int = 0
    last_failure: float | None = None
    verify_last_success: float | None = None


@dataclass
class InstanceStatus:
    instance: str
    error: str = ""  # why the catalog could not be read; "" if it was
    sets: int = 0
    databases: dict[str, DatabaseStatus] = field(default_factory=dict)

    def database(self, name: str) -> DatabaseStatus:
        if name not in self.databases:
            self.databases[name] = DatabaseStatus(name)
        return self.databases[name]

    @property
    def last_success(self) -> float | None:
        times = [d.last_success for d in self.databases.values() if d.last_success is not None]
        return max(times) if times else None


class SizeCache:
    """Per-database stored bytes of a set, from its manifest; bounded, thread-safe."""

    def __init__(self, entries: int = _SIZE_CACHE_ENTRIES) -> None:
        self._entries = entries
        self._sizes: OrderedDict[tuple[str, str], dict[str, int]] = OrderedDict()
        self._lock = threading.Lock()

    def sizes(self, storage: Storage, instance: str, set_id: str) -> dict[str, int] | None:
        key = (instance, set_id)
        with self._lock:
            if key in self._sizes:
                self._sizes.move_to_end(key)
                return self._sizes[key]
        try:
            manifest = backupset.read_manifest(storage, instance, set_id)
        except (DbBackupError, OSError) as exc:
            log.debug("no sizes for %s/%s: %s", instance, set_id, exc)
            return None
        sizes = {db.name: sum(o.stored_bytes for o in db.objects) for db in manifest.databases}
        with self._lock:
            self._sizes[key] = sizes
            while len(self._sizes) > self._entries:
                self._sizes.popitem(last=False)
        return sizes


def epoch_of(text: str) -> float | None:
    """Unix time of an ISO 8601 time with offset; None if it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def read_status(target: Target, *, sizes: SizeCache | None = None) -> InstanceStatus:
    """What the catalog says about one instance; errors end up in ``status.error``."""
    status = InstanceStatus(target.instance)
    if not target.catalog_path.exists():
        return status  # no backup has run yet: no catalog, nothing to report
    try:
        with Catalog.open(target.catalog_path, busy_timeout=SCRAPE_BUSY_TIMEOUT) as catalog:
            _fill(status, catalog, target, sizes)
    except DbBackupError as exc:
        status.error = exc.message
        log.warning("metrics: catalog of instance %s unreadable: %s", target.instance, exc.message)
    return status


def _fill(status: InstanceStatus, catalog: Catalog, target: Target, sizes: SizeCache | None) -> None:
    instance = target.instance
    status.sets = catalog.count(instance=instance)
    for name, newest in catalog.newest_per_database(instance).items():
        _fill_newest(status.database(name), newest, target, sizes)
    for group in catalog.run_groups(instance):
        for name in group.databases or ("",):
            db = status.database(name)
            if group.ok:
                db.successes += group.count
                if db.last_success is None:
                    db.last_success = group.last_finished_epoch
            else:
                db.failures += group.count
                db.last_failure = max(db.last_failure or 0.0, group.last_finished_epoch)
    for verification in catalog.verifications(instance):
        if not verification.ok or verification.mode == "quick":
            continue
        for name in verification.databases:
            db = status.database(name)
            db.verify_last_success = max(db.verify_last_success or 0.0, verification.finished_epoch)


def _fill_newest(db: DatabaseStatus, newest: SetSummary, target: Target, sizes: SizeCache | None) -> None:
    finished, started = epoch_of(newest.finished_at), epoch_of(newest.started_at)
    db.last_set_id = newest.id
    db.last_success = finished
    if finished is not None and started is not None:
        db.last_duration = max(finished - started, 0.0)
    per_database = sizes.sizes(target.storage, target.instance, newest.id) if sizes else None
    if per_database is not None and db.database in per_database:
        db.last_size = per_database[db.database]
    elif len(newest.databases) == 1:
        db.last_size = newest.stored_bytes


class CatalogCollector:
    """A prometheus-client collector over the catalogs of ``targets()``."""

    def __init__(
        self,
        targets: Callable[[], Sequence[Target]],
        *,
        clock: Callable[[], float] = time.time,
        sizes: SizeCache | None = None,
    ) -> None:
        self._targets = targets
        self._clock = clock
        self._sizes = sizes if sizes is not None else SizeCache()

    def describe(self) -> Iterator[Metric]:
        yield from _families().values()

    def collect(self) -> Iterator[Metric]:
        statuses = [read_status(t, sizes=self._sizes) for t in self._targets()]
        yield from families_for(statuses, now=self._clock()).values()


def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
    per_db = ["instance", "database"]
    gauge = GaugeMetricFamily
    return {
        "last_success": gauge(
            "dbbackup_last_success_timestamp_seconds", "End of the newest backup (Unix time).", labels=per_db
        ),
        "age": gauge("dbbackup_backup_age_seconds", "Seconds since the newest backup ended.", labels=per_db),
        "duration": gauge(
            "dbbackup_last_duration_seconds", "How long the newest backup took.", labels=per_db
        ),
        "size": gauge(
            "dbbackup_last_size_bytes", "Stored bytes of the database in the newest set.", labels=per_db
        ),
        "runs": CounterMetricFamily("dbbackup_backups", "Backup runs by result.", labels=[*per_db, "result"]),
        "verify": gauge(
            "dbbackup_verify_last_success_timestamp_seconds",
            "End of the newest passed checksum or deep verification (Unix time).",
            labels=per_db,
        ),
        "sets": gauge("dbbackup_sets", "Complete backup sets in the catalog.", labels=["instance"]),
        "up": gauge("dbbackup_catalog_up", "1 if the catalog could be read.", labels=["instance"]),
    }


def families_for(
    statuses: Iterable[InstanceStatus], *, now: float
) -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
    families = _families()
    for status in statuses:
        families["up"].add_metric([status.instance], 0.0 if status.error else 1.0)
        if status.error:
            continue
        families["sets"].add_metric([status.instance], float(status.sets))
        for name in sorted(status.databases):
            db = status.databases[name]
            labels = [status.instance, name]
            if db.last_success is not None:
                families["last_success"].add_metric(labels, db.last_success)
                families["age"].add_metric(labels, max(now - db.last_success, 0.0))
            if db.last_duration is not None:
                families["duration"].add_metric(labels, db.last_duration)
            if db.last_size is not None:
                families["size"].add_metric(labels, float(db.last_size))
            families["runs"].add_metric([*labels, "success"], float(db.successes))
            families["runs"].add_metric([*labels, "failure"], float(db.failures))
            if db.verify_last_success is not None:
                families["verify"].add_metric(labels, db.verify_last_success)
    return families


def render(targets: Sequence[Target], *, sizes: SizeCache | None = None) -> bytes:
    """The Prometheus text exposition for ``targets``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CatalogCollector(lambda: targets, sizes=sizes))
    return bytes(generate_latest(registry))


def write_textfile(directory: Path, targets: Sequence[Target]) -> Path:
    """Write ``DIR/dbbackup.prom`` atomically (node_exporter never reads half a file)."""
    if not directory.is_dir():
        raise CannotCreateError(
            f"cannot write metrics to {directory}: no such directory",
            hint="give the directory node_exporter reads (--collector.textfile.directory)",
        )
    path = directory / TEXTFILE_NAME
    fsutil.atomic_write_bytes(path, render(targets))
    return path
