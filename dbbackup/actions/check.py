"""The check verb: a monitoring probe with the Nagios plugin conventions.

Per instance, from its catalog:

CRITICAL  no backup at all, or the newest one ended longer than
          ``max_backup_age`` ago (0 turns the age limit off);
WARNING   a backup within the limit exists, but a later backup run failed,
          or the newest verification of a set failed;
UNKNOWN   the catalog or the configuration cannot be read;
OK        otherwise.

Several instances fold into one status (CRITICAL before UNKNOWN before
WARNING before OK) and one line: ``DBBACKUP OK - main: last backup 3h ago``,
followed by performance data (``'main_age'=10800s;;93600;0;``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dbbackup import alerts
from dbbackup.catalog import Catalog
from dbbackup.config.duration import format_duration
from dbbackup.errors import DbBackupError, InputMissingError
from dbbackup.metrics import SCRAPE_BUSY_TIMEOUT, Target, epoch_of

log = logging.getLogger("dbbackup.check")

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
# Which state wins when instances disagree: a known problem beats an unknown one.
_SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}


@dataclass(frozen=True)
class InstanceCheck:
    instance: str
    state: int
    message: str  # "main: last backup 3h ago"
    age: float | None = None  # seconds since the newest backup ended
    max_age: float = 0.0
    overdue: bool = False  # CRITICAL because of age (or no backup): worth an alert

    def to_json(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "status": STATE_NAMES[self.state],
            "message": self.message,
            "age_seconds": self.age,
            "max_age_seconds": self.max_age,
            "overdue": self.overdue,
        }


@dataclass(frozen=True)
class CheckResult:
    state: int
    checks: tuple[InstanceCheck, ...]

    @classmethod
    def of(cls, checks: Sequence[InstanceCheck]) -> CheckResult:
        if not checks:
            return cls(UNKNOWN, (InstanceCheck("-", UNKNOWN, "no instance configured"),))
        worst = max(checks, key=lambda c: _SEVERITY[c.state])
        return cls(worst.state, tuple(checks))

    def summary_line(self) -> str:
        # One line is the plugin contract: multi-line error messages are folded.
        text = "; ".join(" ".join(c.message.split()) for c in self.checks)
        perfdata = " ".join(
            f"'{c.instance}_age'={round(c.age)}s;;{round(c.max_age) or ''};0;"
            for c in self.checks
            if c.age is not None
        )
        line = f"DBBACKUP {STATE_NAMES[self.state]} - {text}"
        return f"{line} | {perfdata}" if perfdata else line


def human_age(seconds: float) -> str:
    """``3h12min``, ``45s``: minutes are enough precision past the first minute."""
    seconds = max(seconds, 0.0)
    return format_duration(float(round(seconds) if seconds < 60 else round(seconds / 60) * 60))


def check_instance(target: Target, *, max_age: float, now: float | None = None) -> InstanceCheck:
    """The state of one instance; never raises for what it finds."""
    moment = time.time() if now is None else now
    name = target.instance
    limit = f", limit {human_age(max_age)}" if max_age > 0 else ""
    if not target.catalog_path.exists():
        return InstanceCheck(
            name, CRITICAL, f"{name}: no backup yet (no catalog){limit}", None, max_age, True
        )
    try:
        with Catalog.open(target.catalog_path, busy_timeout=SCRAPE_BUSY_TIMEOUT) as catalog:
            return _judge(catalog, name, max_age, moment)
    except DbBackupError as exc:
        return InstanceCheck(name, UNKNOWN, f"{name}: cannot read the catalog: {exc.message}", None, max_age)


def _judge(catalog: Catalog, name: str, max_age: float, now: float) -> InstanceCheck:
    limit = f", limit {human_age(max_age)}" if max_age > 0 else ""
    try:
        newest = catalog.latest(instance=name)
    except InputMissingError:
        return InstanceCheck(name, CRITICAL, f"{name}: no backup yet{limit}", None, max_age, True)
    ended = epoch_of(newest.finished_at) or epoch_of(newest.started_at)
    if ended is None:
        return InstanceCheck(name, UNKNOWN, f"{name}: set {newest.id} has no usable end time", None, max_age)
    age = max(now - ended, 0.0)
    text = f"{name}: last backup {human_age(age)} ago"
    if max_age > 0 and age > max_age:
        return InstanceCheck(name, CRITICAL, f"{text}, older than {human_age(max_age)}", age, max_age, True)
    problems = []
    failed = catalog.last_run(name, ok=False)
    if failed is not None and failed.finished_epoch > ended:
        problems.append(f"a run failed {human_age(now - failed.finished_epoch)} ago: {failed.error or '?'}")
    verified = catalog.verifications(name, newest_only=True)
    if verified and not verified[0].ok:
        when = human_age(now - verified[0].finished_epoch)
        problems.append(f"verification of {verified[0].set_id} failed {when} ago")
    if problems:
        return InstanceCheck(name, WARNING, f"{text}; " + "; ".join(problems), age, max_age)
    return InstanceCheck(name, OK, text, age, max_age)


def unknown(instance: str, message: str) -> InstanceCheck:
    return InstanceCheck(instance, UNKNOWN, f"{instance}: {message}")


def run_check(
    settings_list: Sequence[Any], *, max_age: float | None, alert: bool, now: float | None = None
) -> CheckResult:
    """Check every instance in ``settings_list``; POST an alert for each overdue one."""
    checks = []
    for settings in settings_list:
        limit = float(settings.monitoring.max_backup_age) if max_age is None else max_age
        try:
            target = Target.from_settings(settings)
        except DbBackupError as exc:
            checks.append(unknown(str(settings.instance), exc.message))
            continue
        result = check_instance(target, max_age=limit, now=now)
        checks.append(result)
        if result.overdue and alert:
            _alert_overdue(settings, result)
    return CheckResult.of(checks)


def _alert_overdue(settings: Any, result: InstanceCheck) -> None:
    document = alerts.build_alert(
        event="backup_overdue",
        instance=result.instance,
        summary=f"DBBACKUP CRITICAL - {result.message}",
        details={"age_seconds": result.age, "max_age_seconds": result.max_age},
    )
    alerts.send_alert(settings.monitoring, document)
