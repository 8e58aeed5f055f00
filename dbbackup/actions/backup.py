"""The backup verb: dump databases into a new backup set, manifest last."""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime

from dbbackup import backupset, fsutil, keys, objects
from dbbackup import log as dblog
from dbbackup.actions.cleanup import run_cleanup
from dbbackup.actions.context import Runtime
from dbbackup.actions.progress import Progress
from dbbackup.alerts import send_failure_alert
from dbbackup.backupset import DatabaseEntry, Manifest, StoredObject
from dbbackup.catalog import SetSummary
from dbbackup.engines.base import DumpTask, Engine
from dbbackup.errors import DbBackupError, InputMissingError, IOFailure, UsageError
from dbbackup.hooks import run_hook
from dbbackup.pipeline.compress import file_suffix, validate_level
from dbbackup.pipeline.crypto import RecipientGroup

log = logging.getLogger("dbbackup.backup")


@dataclass(frozen=True)
class BackupRequest:
    databases: tuple[str, ...]  # empty: take them from the configuration
    all_databases: bool
    compression: str
    compression_level: int | None
    jobs: int


def choose_databases(
    request: BackupRequest, configured: Sequence[str], exclude: Sequence[str], engine: Engine
) -> tuple[list[str], bool]:
    """Which databases to dump, and whether this is a whole-cluster backup."""
    if request.all_databases and request.databases:
        raise UsageError("--all and --database exclude each other", hint="give one or the other")
    wanted = list(request.databases) or ([] if request.all_databases else list(configured))
    cluster = request.all_databases or wanted == ["*"] or not wanted
    available = engine.list_databases()
    if cluster:
        chosen = [db for db in available if db not in exclude]
    else:
        missing = [db for db in wanted if db not in available]
        if missing:
            raise InputMissingError(
                f"database(s) not found on the server: {', '.join(missing)}",
                hint=f"the server has: {', '.join(available)}",
            )
        chosen = [db for db in dict.fromkeys(wanted) if db not in exclude]
    if not chosen:
        raise UsageError(
            "nothing to back up: every database is excluded",
            hint="check connection.databases and connection.exclude",
        )
    return chosen, cluster


def summary_of(manifest: Manifest) -> SetSummary:
    return SetSummary.from_json(manifest.summary())


class BackupRun:
    def __init__(self, runtime: Runtime, request: BackupRequest, progress: Progress) -> None:
        self.runtime = runtime
        self.request = request
        self.progress = progress
        settings = runtime.settings
        level = validate_level(request.compression, request.compression_level)
        threads = max(1, (os.cpu_count() or 1) // max(1, request.jobs))
        self.compression = objects.Compression(request.compression, level, threads)
        self.zone_name = settings.backup.timezone
        self.zone = backupset.resolve_zone(self.zone_name)
        # Set when the run is abandoned (SIGTERM, a failed task): the other dump
        # workers stop at their next write instead of finishing their table.
        self.cancelled = threading.Event()
        # Checked here, before the lock, the hooks and the write probe: nothing is written yet.
        self.encryption = keys.EncryptionPlan.from_settings(settings.encryption)
        configured = [] if request.all_databases else list(settings.connection.databases)
        wanted = list(request.databases) or configured
        self.encryption.check_required(wanted, whole_cluster=not wanted or wanted == ["*"])
        self._encryption_of: dict[str, RecipientGroup | None] = {}

    def execute(self) -> Manifest:
        runtime = self.runtime
        storage = runtime.storage
        engine = runtime.engine(timeout=runtime.settings.backup.timeout)
        # Fail fast on an unwritable repository before touching the server for long.
        storage.probe_write()
        info = engine.server_info()
        databases, cluster = choose_databases(
            self.request,
            runtime.settings.connection.databases,
            runtime.settings.connection.exclude,
            engine,
        )
        started = backupset.now_in(self.zone)
        set_id = backupset.new_set_id(started)
        prefix = backupset.set_prefix(runtime.instance, set_id)
        storage.prepare(prefix)
        manifest = Manifest(
            id=set_id,
            instance=runtime.instance,
            engine=engine.name,
            kind="full",
            started_at=backupset.iso(started),
            finished_at="",
            timezone=self.zone_name,
            server_version=info.version,
            server_host=info.host,
            compression=self.compression.algorithm,
            compression_level=self.compression.level,
            cluster=cluster,
            server_version_num=info.version_num,
            tools_major=engine.tools_major,
        )
        if (cluster and self.encryption.default is None) or any(
            self.encryption.for_database(db) is None for db in databases
        ):
            log.warning(
                "this backup is not encrypted: set [encryption] recipients (see docs/security.md)",
                extra={"event": "backup_unencrypted"},
            )
        begun = time.monotonic()
        with dblog.log_context(backup_id=set_id):
            log.info(
                "backup started: %d database(s) to %s",
                len(databases),
                storage.url,
                extra={"event": "backup_started"},
            )
            try:
                engine.begin_backup(databases)
                if cluster:
                    self.progress.set_phase("roles and tablespaces")
                    manifest.globals.append(self._store_globals(engine, set_id))
                for name in databases:
                    manifest.databases.append(self._dump_database(engine, set_id, name))
                manifest.finished_at = backupset.iso(backupset.now_in(self.zone))
                manifest.encrypted = all(o.encryption for o in manifest.all_objects())
                if any(o.encryption for o in manifest.all_objects()):
                    keys.write_sealed_manifest(storage, manifest, self.encryption)
                else:
                    backupset.write_manifest(storage, manifest)
            except BaseException:
                self._discard(prefix)
                raise
            finally:
                engine.close()
            runtime.catalog().upsert(summary_of(manifest))
            log.info(
                "backup finished: %s, %d bytes stored",
                set_id,
                manifest.stored_bytes,
                extra={
                    "event": "backup_succeeded",
                    "duration_sec": round(time.monotonic() - begun, 3),
                    "bytes": manifest.stored_bytes,
                },
            )
        return manifest

    def _discard(self, prefix: str) -> None:
        # No manifest was written, so the set is already invisible; this frees the space.
        try:
            self.runtime.storage.delete_prefix(prefix)
        except OSError as exc:
            log.warning("could not remove incomplete set %s: %s", prefix, exc)

    def _key(self, set_id: str, relative: str) -> str:
        return backupset.object_key(self.runtime.instance, set_id, relative)

    def _store_globals(self, engine: Engine, set_id: str) -> StoredObject:
        relative = "globals.sql" + file_suffix(self.compression.algorithm) + _age(self.encryption.default)
        with objects.object_writer(
            self.runtime.storage,
            self._key(set_id, relative),
            relative_key=relative,
            role="globals",
            compression=self.compression,
            encryption=self.encryption.default,
        ) as (sink, done):
            engine.dump_globals(sink)
        return done[0]

    def _dump_database(self, engine: Engine, set_id: str, name: str) -> DatabaseEntry:
        directory = backupset.path_component(name)
        self._encryption_of[directory] = self.encryption.for_database(name)
        storage = self.runtime.storage
        storage.prepare(f"{self.runtime.instance}/{set_id}/{directory}/data")
        begun = time.monotonic()
        with dblog.log_context(database=name), engine.snapshot(name) as dump:
            self.progress.set_phase(f"backing up {name}")
            entry = DatabaseEntry(name=name, directory=directory, properties=dump.properties)
            for task in dump.first:
                entry.objects.append(self._run_task(set_id, directory, task))
            entry.objects.extend(self._run_parallel(set_id, directory, dump.parallel))
            entry.properties["consistency"] = dump.consistency
            stored = sum(o.stored_bytes for o in entry.objects)
            log.info(
                "database %s: %d objects, %d bytes stored",
                name,
                len(entry.objects),
                stored,
                extra={
                    "event": "database_backed_up",
                    "bytes": stored,
                    "duration_sec": round(time.monotonic() - begun, 3),
                },
            )
        return entry

    def _run_parallel(self, set_id: str, directory: str, tasks: list[DumpTask]) -> list[StoredObject]:
        ordered = sorted(tasks, key=lambda t: -t.size_hint)
        results: dict[int, StoredObject] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.request.jobs), thread_name_prefix="dump") as pool:
            futures: dict[Future[StoredObject], int] = {}
            try:
                for task in ordered:
                    index = tasks.index(task)
                    context = contextvars.copy_context()
                    futures[pool.submit(context.run, self._run_task, set_id, directory, task)] = index
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:
                # Terminated by a signal while waiting: leaving the pool joins its workers.
                self.cancelled.set()
                raise
            failed = [f for f in done if f.exception() is not None]
            if failed:
                self.cancelled.set()
                for future in pending:
                    future.cancel()
                wait(pending)
                error = failed[0].exception()
                assert error is not None
                raise error
            for future, index in futures.items():
                results[index] = future.result()
        return [results[i] for i in sorted(results)]

    def _run_task(self, set_id: str, directory: str, task: DumpTask) -> StoredObject:
        suffix = file_suffix(self.compression.algorithm) + _age(self._encryption_of[directory])
        relative = f"{directory}/{task.name}{suffix}"
        with objects.object_writer(
            self.runtime.storage,
            self._key(set_id, relative),
            relative_key=relative,
            role=task.role,
            compression=self.compression,
            table=task.table,
            encryption=self._encryption_of[directory],
        ) as (sink, done):
            task.run(_CountingSink(sink, self.progress, self.cancelled))
        return done[0]


def _age(group: RecipientGroup | None) -> str:
    """``.age`` after the compression suffix of an encrypted object, as the age tool names files."""
    return ".age" if group is not None else ""


class _CountingSink:
    def __init__(self, sink: objects.ObjectSink, progress: Progress, cancelled: threading.Event) -> None:
        self._sink = sink
        self._progress = progress
        self._cancelled = cancelled

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._cancelled.is_set():
            raise IOFailure("backup abandoned: another part of it failed or it was stopped")
        written = self._sink.write(data)
        self._progress.add_bytes(written)
        return written


def _after_success(runtime: Runtime, manifest: Manifest) -> None:
    runtime.catalog().record_run(
        runtime.instance,
        [db.name for db in manifest.databases],
        True,
        manifest.started_at,
        manifest.finished_at,
        set_id=manifest.id,
    )
    if runtime.settings.retention.auto_cleanup:
        # The backup succeeded whatever happens here; a failed cleanup is reported, not fatal.
        try:
            report = run_cleanup(runtime, dry_run=False)
            log.info("retention applied: %d set(s) deleted", len(report.deleted), extra={"event": "cleanup"})
        except DbBackupError as exc:
            log.error("retention after the backup failed: %s", exc.message, extra={"event": "cleanup_failed"})


def _after_failure(runtime: Runtime, request: BackupRequest, started: datetime, exc: DbBackupError) -> None:
    try:
        runtime.catalog().record_run(
            runtime.instance, list(request.databases), False, started, datetime.now(UTC), exc.message
        )
    except DbBackupError as record_error:
        log.warning("could not record the failed run in the catalog: %s", record_error.message)
    send_failure_alert(runtime.settings, exc)


def run_backup(runtime: Runtime, request: BackupRequest, progress: Progress) -> Manifest:
    """One backup of the instance at a time (flock), wrapped in the user's hooks."""
    settings = runtime.settings
    hooks = settings.hooks
    started = datetime.now(UTC)
    fields = {
        "instance": runtime.instance,
        "databases": ",".join(request.databases) or ("*" if request.all_databases else ""),
        "repository": runtime.storage.url,
    }
    lock_path = fsutil.runtime_dir() / f"backup-{runtime.instance}.lock"
    try:
        # Built before the lock, the hooks and the run record in the catalog: a run that
        # its configuration refuses (encryption.require) must write nothing at all.
        backup_run = BackupRun(runtime, request, progress)
    except DbBackupError as exc:
        log.error(
            "backup failed: %s", exc.message, extra={"event": "backup_failed", "exit_code": exc.exit_code}
        )
        send_failure_alert(runtime.settings, exc)
        progress.close()
        raise
    try:
        with fsutil.file_lock(lock_path, wait=settings.backup.lock_wait, what=f"instance {runtime.instance}"):
            run_hook(
                "before_backup", hooks.before_backup, timeout=hooks.timeout, fields=fields, required=True
            )
            try:
                manifest = backup_run.execute()
            except DbBackupError as exc:
                failed = {
                    **fields,
                    "status": "failure",
                    "error": exc.message,
                    "exit_code": str(exc.exit_code),
                }
                run_hook("on_failure", hooks.on_failure, timeout=hooks.timeout, fields=failed, required=False)
                run_hook(
                    "after_backup", hooks.after_backup, timeout=hooks.timeout, fields=failed, required=False
                )
                raise
            _after_success(runtime, manifest)
            done = {
                **fields,
                "status": "success",
                "set_id": manifest.id,
                "exit_code": "0",
                "databases": ",".join(db.name for db in manifest.databases),
            }
            run_hook("on_success", hooks.on_success, timeout=hooks.timeout, fields=done, required=False)
            run_hook("after_backup", hooks.after_backup, timeout=hooks.timeout, fields=done, required=False)
            return manifest
    except DbBackupError as exc:
        log.error(
            "backup failed: %s",
            exc.message,
            extra={"event": "backup_failed", "exit_code": exc.exit_code},
        )
        _after_failure(runtime, request, started, exc)
        raise
    finally:
        progress.close()
