"""Turning results into text or JSON; the only module that decides how things look."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from dbbackup.actions.progress import human_bytes


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def sets_table(summaries: Sequence[dict[str, Any]]) -> str:
    if not summaries:
        return "no complete backup sets"
    rows = [
        (
            s["id"],
            s["kind"],
            s["engine"],
            human_bytes(s["stored_bytes"]),
            "yes" if s["encrypted"] else "no",
            ",".join(s["databases"]),
        )
        for s in summaries
    ]
    return table(("ID", "KIND", "ENGINE", "SIZE", "ENCRYPTED", "DATABASES"), rows)


def manifest_text(manifest: Any) -> str:
    lines = [
        f"set:          {manifest.id}",
        f"instance:     {manifest.instance}",
        f"engine:       {manifest.engine} ({manifest.server_version.split(' on ')[0]})",
        f"server:       {manifest.server_host}",
        f"kind:         {manifest.kind}{' (whole cluster)' if manifest.cluster else ''}",
        f"started:      {manifest.started_at}",
        f"finished:     {manifest.finished_at}",
        f"compression:  {manifest.compression} level {manifest.compression_level}",
        f"encrypted:    {'yes' if manifest.encrypted else 'no'}",
        f"stored:       {human_bytes(manifest.stored_bytes)}",
        "",
    ]
    rows = []
    for db in manifest.databases:
        tables = len(db.objects_with_role("table-data"))
        plain = sum(o.plain_bytes for o in db.objects)
        stored = sum(o.stored_bytes for o in db.objects)
        rows.append((db.name, tables, human_bytes(plain), human_bytes(stored)))
    lines.append(table(("DATABASE", "TABLES", "DUMPED", "STORED"), rows))
    if manifest.globals:
        lines.append(f"\nroles and tablespaces: {human_bytes(manifest.globals[0].plain_bytes)}")
    return "\n".join(lines)


def backup_text(manifest: Any) -> str:
    return (
        f"backup set {manifest.id} complete: {len(manifest.databases)} database(s), "
        f"{human_bytes(manifest.stored_bytes)} stored"
    )


def restore_text(report: Any) -> str:
    heading = "restore plan" if report.dry_run else "restore report"
    lines = [f"{heading} for set {report.set_id}:"]
    if report.globals_status != "not in set":
        lines.append(f"  roles and tablespaces: {report.globals_status}")
        lines.extend(f"    {p}" for p in report.globals_problems)
    rows = []
    for outcome in report.databases:
        detail = (
            outcome.reason
            if outcome.status in ("failed", "skipped")
            else (
                f"{outcome.tables} tables, {human_bytes(outcome.bytes)}"
                + (f", {outcome.duration_sec:.1f} s" if outcome.status == "restored" else "")
            )
        )
        rows.append((outcome.database, outcome.target, outcome.status.upper(), detail))
    lines.append(table(("DATABASE", "TARGET", "STATUS", "DETAIL"), rows))
    lines.extend(
        f"hint for {o.database}: {o.hint}" for o in report.databases if o.status == "failed" and o.hint
    )
    return "\n".join(lines)


def verify_text(report: Any) -> str:
    if report.ok:
        return (
            f"set {report.set_id}: {report.objects} objects ({human_bytes(report.bytes)}) intact "
            f"[{report.mode}, {report.duration_sec:.1f} s]"
        )
    lines = [
        f"set {report.set_id}: {len(report.failures)} of {report.objects} objects FAILED [{report.mode}]"
    ]
    lines.extend(f"  {failure.error}" for failure in report.failures)
    return "\n".join(lines)


def config_values_text(rows: Sequence[tuple[str, str, Any]], *, with_sources: bool) -> str:
    if with_sources:
        return table(
            ("KEY", "VALUE", "SOURCE"),
            [(k, v, f"{s.kind}: {s.detail}" if s.detail else s.kind) for k, v, s in rows],
        )
    return "\n".join(f"{k} = {v}" for k, v, _ in rows)
