"""dbbackup cleanup"""

from __future__ import annotations

import click

from dbbackup import output
from dbbackup.actions.cleanup import CleanupReport, run_cleanup
from dbbackup.actions.context import open_runtime
from dbbackup.cli.state import state
from dbbackup.retention import NO_RULES


def cleanup_text(report: CleanupReport) -> str:
    heading = f"retention of instance {report.instance}: {report.policy.describe()}"
    if report.dry_run:
        heading += " (dry run: nothing is deleted)"
    if not report.decisions:
        return f"{heading}\nno complete backup sets"
    rows = [
        ("KEEP" if d.keep else "DELETE", d.set_id, d.time.isoformat(timespec="seconds"), ", ".join(d.reasons))
        for d in report.decisions
    ]
    lines = [heading, output.table(("ACTION", "SET", "TIME", "REASONS"), rows)]
    for child, parent in report.missing_parents.items():
        lines.append(f"warning: set {child} depends on {parent}, which is missing")
    verb = "would be" if report.dry_run else "were"
    if report.leftovers:
        names = ", ".join(report.leftovers)
        lines.append(f"{len(report.leftovers)} incomplete set directories {verb} removed: {names}")
    if report.decisions and report.decisions[0].reasons == (NO_RULES,):
        lines.append("no [retention] rule is configured: every set is kept")
    lines.append(f"{len(report.kept)} kept, {len(report.deleted)} {verb} deleted")
    return "\n".join(lines)


@click.command()
@click.option("--dry-run", is_flag=True, help="Show each set's fate and the reasons; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
@click.pass_context
def cleanup(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Apply the [retention] policy: delete the backup sets it does not keep."""
    settings = state(ctx).load().settings
    with open_runtime(settings) as runtime:
        report = run_cleanup(runtime, dry_run=dry_run)
    click.echo(output.to_json(report.to_json()) if as_json else cleanup_text(report))
