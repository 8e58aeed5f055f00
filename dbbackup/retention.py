"""Retention policy: which complete backup sets to keep, and why.

Pure logic, no I/O: the cleanup action hands in what it read from the
manifests and gets back one decision per set, each with its reasons, so that
``cleanup --dry-run`` can show exactly what a real run would do.

Rules (all optional, any combination; a set kept by any rule is kept):

``keep_last N``
    the N newest sets.
``keep_within D``
    every set that finished less than D before now.
``keep_daily/weekly/monthly/yearly N``
    the newest set of each of the last N days (ISO weeks, months, years) that
    have a set at all, so a gap in backups does not use up the allowance.
    Periods follow the wall clock the set was made in (the offset in its
    time), i.e. the date shown in the set's name.

Whatever the rules say, the newest set is kept, at least ``min_keep`` sets
are kept, and a set that a kept set depends on (its ``parent``, and that
one's parent, ...) is kept. With no rule configured, everything is kept:
retention must be asked for, never guessed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from dbbackup.config.duration import format_duration
from dbbackup.errors import InternalError

NEWEST = "newest complete set"
NO_RULES = "no retention rule configured"
NOT_KEPT = "no rule keeps it"


class _RetentionSection(Protocol):
    keep_last: int
    keep_within: float
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    keep_yearly: int
    min_keep: int


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 0
    keep_within: float = 0.0  # seconds; 0 = rule off
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    min_keep: int = 1

    @classmethod
    def from_settings(cls, retention: _RetentionSection) -> RetentionPolicy:
        return cls(
            keep_last=retention.keep_last,
            keep_within=retention.keep_within,
            keep_daily=retention.keep_daily,
            keep_weekly=retention.keep_weekly,
            keep_monthly=retention.keep_monthly,
            keep_yearly=retention.keep_yearly,
            min_keep=retention.min_keep,
        )

    @property
    def has_rules(self) -> bool:
        counts = (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly)
        return any(counts) or self.keep_within > 0

    def describe(self) -> str:
        """``keep_last=7, keep_daily=14, min_keep=1`` (only the rules in effect)."""
        parts = [f"{name}={value}" for name, value in self._counts() if value]
        if self.keep_within > 0:
            parts.insert(1 if self.keep_last else 0, f"keep_within={format_duration(self.keep_within)}")
        parts.append(f"min_keep={self.min_keep}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = dict(self._counts())
        data["keep_within_seconds"] = self.keep_within
        data["min_keep"] = self.min_keep
        return data

    def _counts(self) -> list[tuple[str, int]]:
        return [
            ("keep_last", self.keep_last),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
            ("keep_yearly", self.keep_yearly),
        ]


@dataclass(frozen=True)
class SetInfo:
    """What the policy needs to know of one complete set."""

    id: str
    time: datetime  # timezone-aware; when the set finished
    parent: str | None = None


@dataclass(frozen=True)
class Decision:
    set_id: str
    time: datetime
    keep: bool
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.set_id,
            "time": self.time.isoformat(timespec="seconds"),
            "action": "keep" if self.keep else "delete",
            "reasons": list(self.reasons),
        }


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _week(moment: datetime) -> str:
    iso = moment.isocalendar()
    return f"{iso.year:04d}-W{iso.week:02d}"


def _month(moment: datetime) -> str:
    return moment.strftime("%Y-%m")


def _year(moment: datetime) -> str:
    return moment.strftime("%Y")


_PERIODS: tuple[tuple[str, str, Callable[[datetime], str]], ...] = (
    ("keep_daily", "daily", _day),
    ("keep_weekly", "weekly", _week),
    ("keep_monthly", "monthly", _month),
    ("keep_yearly", "yearly", _year),
)


def newest_first(sets: Iterable[SetInfo]) -> list[SetInfo]:
    return sorted(sets, key=lambda s: (s.time, s.id), reverse=True)


def decide(sets: Sequence[SetInfo], policy: RetentionPolicy, *, now: datetime) -> list[Decision]:
    """One decision per set, newest first."""
    ordered = newest_first(sets)
    if len({s.id for s in ordered}) != len(ordered):
        raise InternalError("retention was given the same backup set twice")
    if now.tzinfo is None or any(s.time.tzinfo is None for s in ordered):
        raise InternalError("retention needs timezone-aware times")
    reasons: dict[str, list[str]] = {s.id: [] for s in ordered}
    if not ordered:
        return []
    if not policy.has_rules:
        return [Decision(s.id, s.time, True, (NO_RULES,)) for s in ordered]

    reasons[ordered[0].id].append(NEWEST)
    _apply_rules(ordered, policy, now, reasons)
    _protect_parents(ordered, reasons)
    kept = sum(1 for s in ordered if reasons[s.id])
    if kept < policy.min_keep:
        for candidate in ordered:
            if kept >= policy.min_keep:
                break
            if not reasons[candidate.id]:
                reasons[candidate.id].append(f"min_keep {policy.min_keep}")
                kept += 1
        _protect_parents(ordered, reasons)
    return [Decision(s.id, s.time, bool(reasons[s.id]), tuple(reasons[s.id]) or (NOT_KEPT,)) for s in ordered]


def _apply_rules(
    ordered: Sequence[SetInfo], policy: RetentionPolicy, now: datetime, reasons: Mapping[str, list[str]]
) -> None:
    for position, info in enumerate(ordered[: policy.keep_last], start=1):
        reasons[info.id].append(f"keep_last {policy.keep_last} (#{position})")
    if policy.keep_within > 0:
        horizon = now - timedelta(seconds=policy.keep_within)
        within = format_duration(policy.keep_within)
        for info in ordered:
            if info.time >= horizon:
                reasons[info.id].append(f"keep_within {within}")
    for key, label, period_of in _PERIODS:
        wanted: int = getattr(policy, key)
        seen: set[str] = set()
        for info in ordered:
            if len(seen) >= wanted:
                break
            period = period_of(info.time)
            if period not in seen:
                seen.add(period)
                reasons[info.id].append(f"{label} {period}")


def _protect_parents(ordered: Sequence[SetInfo], reasons: Mapping[str, list[str]]) -> None:
    """Keep every ancestor of a kept set: without it the kept set cannot be restored."""
    by_id = {s.id: s for s in ordered}
    for info in ordered:
        if not reasons[info.id]:
            continue
        child, parent_id = info, info.parent
        visited = {info.id}
        while parent_id is not None and parent_id in by_id and parent_id not in visited:
            visited.add(parent_id)
            note = f"parent of {child.id}"
            if note not in reasons[parent_id]:
                reasons[parent_id].append(note)
            child = by_id[parent_id]
            parent_id = child.parent


def deletion_order(sets: Sequence[SetInfo], decisions: Sequence[Decision]) -> list[str]:
    """Ids of the sets to delete, each after every set to delete that depends on it.

    If a run is interrupted, what is left is then still restorable: a set is
    never gone while a set built on it is still listed. Among sets free to go,
    the newest goes first.
    """
    doomed = {d.set_id for d in decisions if not d.keep}
    ordered = [s for s in newest_first(sets) if s.id in doomed]
    rank = {s.id: position for position, s in enumerate(ordered)}
    waiting_on: dict[str, int] = dict.fromkeys(rank, 0)  # doomed children not yet deleted
    for info in ordered:
        if info.parent in waiting_on and info.parent != info.id:
            waiting_on[info.parent] += 1
    by_id = {s.id: s for s in ordered}
    ready = [rank[set_id] for set_id, count in waiting_on.items() if count == 0]
    heapq.heapify(ready)
    emitted: list[str] = []
    while ready:
        info = ordered[heapq.heappop(ready)]
        emitted.append(info.id)
        parent = by_id.get(info.parent) if info.parent is not None else None
        if parent is not None and parent.id != info.id:
            waiting_on[parent.id] -= 1
            if waiting_on[parent.id] == 0:
                heapq.heappush(ready, rank[parent.id])
    # Only a cycle of parents (a damaged manifest) leaves sets here; no order helps them.
    placed = set(emitted)
    emitted.extend(s.id for s in ordered if s.id not in placed)
    return emitted


def missing_parents(sets: Sequence[SetInfo]) -> dict[str, str]:
    """Set id -> parent id, for sets whose parent is not among ``sets`` (already broken chains)."""
    known = {s.id for s in sets}
    return {s.id: s.parent for s in sets if s.parent is not None and s.parent not in known}
