"""User commands run around backups and restores.

A hook is an argv list run without a shell (write ``["/bin/sh", "-c", "..."]``
to get one), with a deadline, and with what it needs to know in its
environment:

``DBBACKUP_HOOK``       the hook's name (before_backup, on_failure, ...)
``DBBACKUP_INSTANCE``   the instance
``DBBACKUP_DATABASES``  comma-separated databases of the run (when known)
``DBBACKUP_SET_ID``     the backup set (after a successful backup, or the set restored)
``DBBACKUP_STATUS``     ``success`` or ``failure`` (after-hooks)
``DBBACKUP_ERROR``      the error message (failure hooks)
``DBBACKUP_EXIT_CODE``  the run's exit code (after-hooks)
``DBBACKUP_REPOSITORY`` the repository

A failing ``before_*`` hook aborts the run; a failing after-hook is logged
and does not change the run's result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from dbbackup import execute
from dbbackup.errors import DbBackupError, GeneralError

log = logging.getLogger("dbbackup.hooks")

OUTPUT_LINES = 50


def hook_environment(name: str, fields: Mapping[str, str]) -> dict[str, str]:
    extra = {f"DBBACKUP_{key.upper()}": value for key, value in fields.items()}
    extra["DBBACKUP_HOOK"] = name
    return execute.child_environment(extra)


def run_hook(
    name: str, argv: Sequence[str], *, timeout: float, fields: Mapping[str, str], required: bool
) -> None:
    if not argv:
        return
    log.info("running %s hook: %s", name, argv[0], extra={"event": f"hook_{name}"})
    try:
        out, err = execute.run_capture(
            list(argv), env=hook_environment(name, fields), timeout=timeout, context=f"{name} hook"
        )
    except DbBackupError as exc:
        if required:
            raise GeneralError(
                f"the {name} hook failed, so the run was not started: {exc.message}",
                hint=f"fix or remove hooks.{name} ({argv[0]})",
            ) from exc
        log.error("%s hook failed: %s", name, exc.message, extra={"event": "hook_failed"})
        return
    lines = (out + err).decode("utf-8", "replace").splitlines()
    for line in lines[-OUTPUT_LINES:]:
        log.info("%s hook: %s", name, line, extra={"event": "hook_output"})
