"""mobvibe-queue doctor: look for what must never be in the queue's data and schema."""

from __future__ import annotations

import json

import click

from mobvibe.cli.options import friendly_errors, moved_to_the_database, resolve_database
from mobvibe.reaper.doctor import CHECK_COUNT, Report, diagnose
from mobvibe.sql import db
from mobvibe.terminal import visible


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok, findings, not_shown.")
@moved_to_the_database("--heartbeat-timeout")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=20, help="Findings shown per check."
)
@click.pass_context
@friendly_errors
def doctor(ctx: click.Context, as_json: bool, limit: int) -> None:
    """Check the queue for what must never be; exit 1 if anything is found.

    A processing job is dead when silent for longer than the configured heartbeat timeout.
    """
    with db.connect(resolve_database(ctx.obj), application_name="mobvibe-doctor") as conn:
        report = diagnose(conn, limit)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(visible(_text(report)))  # worker ids and names come from the database
    ctx.exit(0 if report.ok else 1)


def _text(report: Report) -> str:
    lines = []
    for i, finding in enumerate(report.findings):
        lines.append(f"{finding.check}: {finding.message}")
        following = report.findings[i + 1].check if i + 1 < len(report.findings) else None
        if following != finding.check and finding.check in report.not_shown:
            lines.append(f"{finding.check}: ... and {report.not_shown[finding.check]} more")
    if report.ok:
        lines.append(f"ok: {CHECK_COUNT} checks, nothing found")
    else:
        lines.append(f"{len(report.findings) + sum(report.not_shown.values())} finding(s)")
    return "\n".join(lines)
