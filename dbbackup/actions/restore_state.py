"""What an earlier restore of a set already finished, so ``--resume`` can skip it.

One small JSON file per (set, target server), rewritten atomically after each
database changes state: ``started`` (dbbackup created it and began loading)
or ``restored`` (complete). Kept in the state directory, not the repository,
which may be read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from dbbackup import fsutil
from dbbackup.errors import DataError

STARTED = "started"
RESTORED = "restored"


def state_dir() -> Path:
    if env := os.environ.get("STATE_DIRECTORY"):
        return Path(env.split(":")[0]) / "restore-state"
    if os.geteuid() == 0:
        return Path("/var/lib/dbbackup/restore-state")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dbbackup" / "restore-state"


class RestoreState:
    def __init__(self, path: Path, databases: dict[str, str]) -> None:
        self.path = path
        self.databases = databases
        self._lock = threading.Lock()

    @classmethod
    def open(cls, set_id: str, server: str, *, resume: bool, directory: Path | None = None) -> RestoreState:
        where = directory or state_dir()
        digest = hashlib.sha256(server.encode()).hexdigest()[:12]
        path = where / f"{set_id}-{digest}.json"
        databases: dict[str, str] = {}
        if resume and path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                databases = {str(k): str(v) for k, v in loaded["databases"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise DataError(
                    f"restore state {path} is unreadable: {exc}",
                    hint="remove it and restore without --resume (with --clean)",
                ) from exc
        return cls(path, databases)

    def status(self, target: str) -> str | None:
        return self.databases.get(target)

    def mark(self, target: str, status: str) -> None:
        with self._lock:
            self.databases[target] = status
            fsutil.ensure_dir(self.path.parent)
            payload = json.dumps({"databases": self.databases}, indent=2, sort_keys=True).encode()
            fsutil.atomic_write_bytes(self.path, payload)
