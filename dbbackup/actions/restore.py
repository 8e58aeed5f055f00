"""The restore verb: globals, then per database pre-data -> data -> post-data.

Every database ends with an outcome (restored / failed with reason /
skipped), and the run's exit code is non-zero if any failed.
"""

from __future__ import annotations

import contextvars
import io
import logging
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from dbbackup import backupset, keys, objects
from dbbackup import log as dblog
from dbbackup.actions.context import Runtime
from dbbackup.actions.progress import Progress
from dbbackup.actions.restore_state import RESTORED, STARTED, RestoreState
from dbbackup.actions.sets import resolve_set
from dbbackup.backupset import DatabaseEntry, Manifest, StoredObject
from dbbackup.engines.base import Engine
from dbbackup.errors import EX_OK, DataError, DbBackupError, IOFailure, UsageError
from dbbackup.hooks import run_hook
from dbbackup.pipeline.crypto import Identity

log = logging.getLogger("dbbackup.restore")

PHASES = ("pre-data", "table-data", "sequences", "large-objects", "post-data")


@dataclass(frozen=True)
class RestoreRequest:
    set_ref: str
    databases: tuple[str, ...] = ()
    all_databases: bool = False
    target_db: str | None = None
    clean: bool = False
    jobs: int = 2
    dry_run: bool = False
    continue_on_error: bool = False
    resume: bool = False


@dataclass
class DatabaseOutcome:
    database: str
    target: str
    status: str  # planned | restored | failed | skipped
    reason: str = ""
    hint: str = ""
    exit_code: int = EX_OK
    tables: int = 0
    bytes: int = 0
    duration_sec: float = 0.0


@dataclass
class RestoreReport:
    set_id: str
    instance: str
    dry_run: bool
    globals_status: str = "not in set"  # restored | failed | skipped | planned | not in set
    globals_problems: list[str] = field(default_factory=list)
    databases: list[DatabaseOutcome] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        for outcome in self.databases:
            if outcome.status == "failed":
                return outcome.exit_code
        return EX_OK

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        data["ok"] = self.exit_code == EX_OK
        return data


def select_databases(manifest: Manifest, request: RestoreRequest) -> list[tuple[DatabaseEntry, str]]:
    if request.all_databases and request.databases:
        raise UsageError("--all and --database exclude each other")
    entries = (
        [manifest.database(name) for name in request.databases]
        if request.databases
        else list(manifest.databases)
    )
    if request.target_db is not None and len(entries) != 1:
        raise UsageError(
            "--target-db needs exactly one database to restore",
            hint="add --database NAME (the set holds: "
            + ", ".join(db.name for db in manifest.databases)
            + ")",
        )
    return [(entry, request.target_db or entry.name) for entry in entries]


def unlock(
    runtime: Runtime, manifest: Manifest, stored: list[StoredObject], *, prove: bool, jobs: int
) -> list[Identity]:
    """Authenticate an encrypted set and find the identities for ``stored`` (exit 65 or 77).

    Unless ``prove`` is off (dry run), every object's checksum is then proven against
    the authenticated manifest, so a tampered object fails before the target is touched.
    """
    sealed = any(o.encryption for o in manifest.all_objects())
    identities = runtime.identities() if sealed else []
    keys.unlock_set(
        runtime.storage,
        manifest,
        stored,
        identities,
        need_identities=True,
        require_encryption=runtime.settings.encryption.require,
    )
    if sealed and prove:
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="prove") as pool:
            checks = [
                pool.submit(
                    objects.verify_stored,
                    runtime.storage,
                    backupset.object_key(manifest.instance, manifest.id, obj.key),
                    obj,
                    deep=False,
                )
                for obj in stored
            ]
            try:
                for check in checks:
                    check.result()
            finally:
                for check in checks:
                    check.cancel()
    return identities


def check_sizes(runtime: Runtime, manifest: Manifest, stored: list[StoredObject]) -> None:
    """A cheap look at every object before the server is touched: missing or cut short."""
    for obj in stored:
        key = backupset.object_key(manifest.instance, manifest.id, obj.key)
        size = runtime.storage.size(key)
        if size != obj.stored_bytes:
            raise DataError(
                f"{key}: stored size is {size} bytes, the manifest says {obj.stored_bytes}",
                hint="the set is damaged (truncated or replaced); restore from another set",
            )


class RestoreRun:
    def __init__(self, runtime: Runtime, request: RestoreRequest, progress: Progress) -> None:
        self.runtime = runtime
        self.request = request
        self.progress = progress
        self.identities: list[Identity] = []
        # Set when the run is abandoned (SIGTERM): loading workers stop at their next read.
        self.cancelled = threading.Event()

    def execute(self) -> RestoreReport:
        manifest = resolve_set(self.runtime, self.request.set_ref)
        selected = select_databases(manifest, self.request)
        with_globals = bool(manifest.globals) and (self.request.all_databases or not self.request.databases)
        report = RestoreReport(set_id=manifest.id, instance=manifest.instance, dry_run=self.request.dry_run)
        stored = (manifest.globals if with_globals else []) + [o for e, _ in selected for o in e.objects]
        check_sizes(self.runtime, manifest, stored)
        self.identities = unlock(
            self.runtime, manifest, stored, prove=not self.request.dry_run, jobs=self.request.jobs
        )
        if self.request.dry_run:
            report.globals_status = "planned" if with_globals else report.globals_status
            report.databases = [
                DatabaseOutcome(
                    e.name,
                    target,
                    "planned",
                    tables=len(e.objects_with_role("table-data")),
                    bytes=sum(o.plain_bytes for o in e.objects),
                )
                for e, target in selected
            ]
            return report
        engine = self.runtime.engine(timeout=self.runtime.settings.restore.timeout)
        try:
            info = engine.server_info()
            engine.check_restore(manifest.server_version_num, manifest.tools_major)
            state = RestoreState.open(manifest.id, info.host, resume=self.request.resume)
            with dblog.log_context(backup_id=manifest.id):
                if with_globals:
                    self._restore_globals(engine, manifest, report)
                report.databases = self._restore_databases(engine, manifest, selected, state)
        finally:
            engine.close()
        return report

    def _restore_databases(
        self,
        engine: Engine,
        manifest: Manifest,
        selected: list[tuple[DatabaseEntry, str]],
        state: RestoreState,
    ) -> list[DatabaseOutcome]:
        """Up to ``jobs`` databases at once; each gets its share of table jobs."""
        parallel = max(1, min(self.request.jobs, len(selected)))
        table_jobs = max(1, self.request.jobs // parallel)
        stop = threading.Event()

        def one(entry: DatabaseEntry, target: str) -> DatabaseOutcome:
            if stop.is_set():
                return DatabaseOutcome(entry.name, target, "skipped", reason="an earlier database failed")
            if self.request.resume and state.status(target) == RESTORED:
                return DatabaseOutcome(
                    entry.name, target, "skipped", reason="already restored by an earlier run (--resume)"
                )
            # A database an interrupted run had begun is ours to drop and redo.
            clean = self.request.clean or (self.request.resume and state.status(target) == STARTED)
            outcome = self._restore_one(engine, manifest, entry, target, clean, table_jobs, state)
            if outcome.status == "failed" and not self.request.continue_on_error:
                stop.set()
            return outcome

        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="database") as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, e, t) for e, t in selected]
            try:
                return [future.result() for future in futures]
            except BaseException:
                stop.set()
                self.cancelled.set()
                raise

    def _key(self, manifest: Manifest, obj: StoredObject) -> str:
        return backupset.object_key(manifest.instance, manifest.id, obj.key)

    def _restore_globals(self, engine: Engine, manifest: Manifest, report: RestoreReport) -> None:
        self.progress.set_phase("restoring roles and tablespaces")
        script = objects.read_all_verified(
            self.runtime.storage,
            self._key(manifest, manifest.globals[0]),
            manifest.globals[0],
            identities=self.identities,
        )
        problems = engine.restore_globals(script)
        report.globals_problems = problems
        report.globals_status = "restored" if not problems else "failed"
        for problem in problems:
            log.error("restoring globals: %s", problem, extra={"event": "globals_error"})

    def _restore_one(
        self,
        engine: Engine,
        manifest: Manifest,
        entry: DatabaseEntry,
        target: str,
        clean: bool,
        jobs: int,
        state: RestoreState,
    ) -> DatabaseOutcome:
        begun = time.monotonic()
        outcome = DatabaseOutcome(entry.name, target, "restored")
        with dblog.log_context(database=entry.name):
            try:
                outcome.bytes = self._restore_database(engine, manifest, entry, target, clean, jobs, state)
                state.mark(target, RESTORED)
                outcome.tables = len(entry.objects_with_role("table-data"))
                log.info("restored %s into %s", entry.name, target, extra={"event": "database_restored"})
            except DbBackupError as exc:
                outcome.status, outcome.reason, outcome.exit_code = (
                    "failed",
                    exc.message,
                    exc.exit_code,
                )
                outcome.hint = exc.hint or ""
                log.error(
                    "restoring %s failed: %s",
                    entry.name,
                    exc.message,
                    extra={"event": "database_restore_failed", "exit_code": exc.exit_code},
                )
        outcome.duration_sec = round(time.monotonic() - begun, 3)
        return outcome

    def _restore_database(
        self,
        engine: Engine,
        manifest: Manifest,
        entry: DatabaseEntry,
        target: str,
        clean: bool,
        jobs: int,
        state: RestoreState,
    ) -> int:
        storage = self.runtime.storage
        self.progress.set_phase(f"restoring {entry.name}")
        # Schema objects are small: prove them whole before the target is touched.
        ddl = {
            role: objects.read_all_verified(
                storage, self._key(manifest, obj), obj, identities=self.identities
            )
            for role in ("pre-data", "sequences", "post-data")
            for obj in entry.objects_with_role(role)
        }
        if "pre-data" not in ddl or "post-data" not in ddl:
            raise DataError(f"set {manifest.id}: database {entry.name} lacks its schema objects")
        engine.prepare_target(target, entry.properties, clean=clean)
        state.mark(target, STARTED)
        engine.restore_ddl(target, "pre-data", io.BytesIO(ddl["pre-data"]))
        loaded = self._restore_tables(engine, manifest, entry, target, jobs)
        engine.restore_sql(target, ddl.get("sequences", b""))
        for obj in entry.objects_with_role("large-objects"):
            with objects.VerifiedReader(
                storage, self._key(manifest, obj), obj, identities=self.identities
            ) as reader:
                engine.restore_ddl(target, "large-objects", reader)
        engine.restore_ddl(target, "post-data", io.BytesIO(ddl["post-data"]), jobs=jobs)
        return loaded

    def _restore_tables(
        self, engine: Engine, manifest: Manifest, entry: DatabaseEntry, target: str, jobs: int
    ) -> int:
        tables = sorted(entry.objects_with_role("table-data"), key=lambda o: -o.plain_bytes)

        def load(obj: StoredObject) -> int:
            assert obj.table is not None
            with objects.VerifiedReader(
                self.runtime.storage, self._key(manifest, obj), obj, identities=self.identities
            ) as reader:
                counted = _ProgressReader(reader, self.progress, self.cancelled)
                return engine.restore_table(target, obj.table, counted, reader.finish)

        total = 0
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="restore") as pool:
            futures = [pool.submit(contextvars.copy_context().run, load, obj) for obj in tables]
            _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            wait(pending)
            for future in futures:
                if future.cancelled():
                    continue
                error = future.exception()
                if error is not None:
                    raise error
                total += future.result()
        return total


class _ProgressReader:
    def __init__(
        self, reader: objects.VerifiedReader, progress: Progress, cancelled: threading.Event
    ) -> None:
        self._reader = reader
        self._progress = progress
        self._cancelled = cancelled

    def read(self, size: int = objects.CHUNK) -> bytes:
        if self._cancelled.is_set():
            raise IOFailure("restore abandoned: it was stopped")
        data = self._reader.read(size)
        self._progress.add_bytes(len(data))
        return data


def run_restore(runtime: Runtime, request: RestoreRequest, progress: Progress) -> RestoreReport:
    hooks = runtime.settings.hooks
    fields = {
        "instance": runtime.instance,
        "databases": ",".join(request.databases),
        "set_id": request.set_ref,
        "repository": runtime.storage.url,
    }
    try:
        if not request.dry_run:
            run_hook(
                "before_restore", hooks.before_restore, timeout=hooks.timeout, fields=fields, required=True
            )
        report = RestoreRun(runtime, request, progress).execute()
    except DbBackupError as exc:
        log.error(
            "restore failed: %s", exc.message, extra={"event": "restore_failed", "exit_code": exc.exit_code}
        )
        if not request.dry_run:
            failed = {**fields, "status": "failure", "error": exc.message, "exit_code": str(exc.exit_code)}
            run_hook(
                "on_restore_failure",
                hooks.on_restore_failure,
                timeout=hooks.timeout,
                fields=failed,
                required=False,
            )
            run_hook(
                "after_restore", hooks.after_restore, timeout=hooks.timeout, fields=failed, required=False
            )
        raise
    finally:
        progress.close()
    if request.dry_run:
        return report
    ok = report.exit_code == EX_OK
    outcome = {
        **fields,
        "set_id": report.set_id,
        "status": "success" if ok else "failure",
        "exit_code": str(report.exit_code),
        "databases": ",".join(o.database for o in report.databases),
    }
    if not ok:
        reasons = "; ".join(f"{o.database}: {o.reason}" for o in report.databases if o.status == "failed")
        outcome["error"] = reasons
        log.error(
            "restore finished with failures: %s",
            reasons,
            extra={"event": "restore_failed", "exit_code": report.exit_code},
        )
        run_hook(
            "on_restore_failure",
            hooks.on_restore_failure,
            timeout=hooks.timeout,
            fields=outcome,
            required=False,
        )
    else:
        log.info("restore finished", extra={"event": "restore_succeeded"})
        run_hook(
            "on_restore_success",
            hooks.on_restore_success,
            timeout=hooks.timeout,
            fields=outcome,
            required=False,
        )
    run_hook("after_restore", hooks.after_restore, timeout=hooks.timeout, fields=outcome, required=False)
    return report
