"""The status pages as HTML: plain pages rendered here, refreshed by the browser itself.

Every value from the database goes through `_e` (prompts, outputs, errors and
worker ids are user text); the only markup is ours. The style sheet is fixed,
so that the Content-Security-Policy can allow it by its hash and nothing else:
no script at all, no inline style, no outside resource.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from urllib.parse import urlencode

from mobvibe.sql.store import Attempt, Event, JobDetail, JobSummary, MinuteCount, RunningJob
from mobvibe.supervisor.statusdata import Overview

REFRESH_SECONDS = 5
STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
NONE = "-"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;
background:#f6f8fa}
header{background:#24292f;color:#fff;padding:10px 24px;display:flex;gap:20px;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:600}header .at{margin-left:auto;
color:#c9d1d9;font-size:12px}
main{padding:16px 24px;max-width:1400px}h1{font-size:20px;margin:4px 0 12px}
h2{font-size:15px;margin:22px 0 8px}section{margin-bottom:8px}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;min-width:110px;
text-decoration:none;color:inherit}
.tile .n{font-size:24px;font-weight:600;display:block}.tile .l{color:#57606a;font-size:12px}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de;width:100%}
th,td{text-align:left;padding:5px 9px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;font-size:12px;color:#57606a;font-weight:600}
td.num,th.num{text-align:right}.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px}
a.mono,td.t{white-space:nowrap}
svg{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:6px}
pre{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px;white-space:pre-wrap;
word-break:break-word;max-height:480px;overflow:auto;font-size:12px}
.status{border-radius:10px;padding:1px 8px;font-size:12px;font-weight:600;white-space:nowrap}
.st-pending{background:#ddf4ff;color:#0969da}.st-processing{background:#fff8c5;color:#9a6700}
.st-completed{background:#dafbe1;color:#1a7f37}.st-failed{background:#ffebe9;color:#cf222e}
.st-cancelled{background:#eaeef2;color:#57606a}.warn{color:#cf222e;font-weight:600}
.muted{color:#57606a}dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;
background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;margin:0}
dt{color:#57606a}dd{margin:0}form{margin:0 0 12px;display:flex;gap:10px;align-items:center}
input,select,button{font:inherit;padding:3px 6px}
""".strip()
# Content-Security-Policy: this style sheet, same-origin forms, nothing else.
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _time(value: datetime | None) -> str:
    return NONE if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _status(status: str) -> str:
    return f'<span class="status st-{_e(status)}">{_e(status)}</span>'


def _job_link(job_id: object, text: str | None = None) -> str:
    return f'<a class="mono" href="/jobs/{_e(job_id)}">{_e(text or job_id)}</a>'


def _jobs_href(**query: object) -> str:
    return "/jobs?" + urlencode({k: v for k, v in query.items() if v is not None})


def _head(text: str | None, width: int = 80) -> str:
    if not text:
        return NONE
    flat = " ".join(text.split())
    return _e(flat if len(flat) <= width else flat[: width - 1] + "…")


def _table(headers: Sequence[str], rows: Iterable[str], empty: str, numeric: int = 0) -> str:
    cells = "".join(
        f'<th class="num">{_e(h)}</th>' if numeric & (1 << i) else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(rows)
    if not body:
        return f'<p class="muted">{_e(empty)}</p>'
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def layout(title: str, body: str, *, refresh: bool = True) -> str:
    """A whole page: the header, `body`, and the browser's own refresh."""
    now = datetime.now(UTC)
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    every = f", refreshed every {REFRESH_SECONDS} s" if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{meta}'
        f"<title>{_e(title)} · MobVibe queue</title><style>{STYLE}</style></head><body>"
        '<header><a href="/">MobVibe queue</a><a href="/jobs">Jobs</a>'
        '<a href="/api/stats">JSON</a>'
        f'<span class="at">{_time(now)} UTC{every}</span></header>'
        f"<main>{body}</main></body></html>"
    )


def error_page(code: int, message: str) -> str:
    """A page that says what went wrong (no refresh for a bad address; a retry for 503)."""
    return layout(f"{code}", f"<h1>{code}</h1><p>{_e(message)}</p>", refresh=code == 503)


# -- the front page -------------------------------------------------------------------


def overview_page(ov: Overview) -> str:
    """Depth by status, throughput, the running jobs, recent dead letters and cancellations."""
    body = [
        "<h1>Queue</h1>",
        _depth(ov),
        f"<h2>Last {len(ov.minutes)} minutes</h2>",
        _throughput(ov),
        f'<h2>Running now (<span id="running-count">{len(ov.running)}</span>)</h2>',
        _running(ov),
        '<h2><a href="/jobs?status=failed">Recent dead letters</a></h2>',
        _ended(ov.dead_letters, "dead-letters", "No dead letter."),
        '<h2><a href="/jobs?status=cancelled">Recent cancellations</a></h2>',
        _ended(ov.cancellations, "cancellations", "No cancelled job."),
    ]
    return layout("Queue", "".join(body))


def _depth(ov: Overview) -> str:
    s = ov.stats
    counts = {
        "pending": s.pending_count,
        "processing": s.processing_count,
        "completed": s.completed_count,
        "failed": s.failed_count,
        "cancelled": s.cancelled_count,
    }
    tiles = [
        f'<a class="tile" href="{_e(_jobs_href(status=name))}"><span class="n" '
        f'id="count-{name}">{value}</span><span class="l">{_status(name)}</span></a>'
        for name, value in counts.items()
    ]
    age = None if s.oldest_pending_age is None else s.oldest_pending_age.total_seconds()
    tiles.append(
        f'<div class="tile"><span class="n" id="oldest-pending">{_age(age)}</span>'
        '<span class="l">oldest pending</span></div>'
    )
    # get_queue_stats() counts every pending job whose run_at is ahead: retries in
    # their backoff and jobs scheduled for later alike.
    next_due = "none" if s.next_run_at is None else f"the next at {_time(s.next_run_at)} UTC"
    tiles.append(
        f'<div class="tile" title="{_e(next_due)}"><span class="n" id="due-later">'
        f'{s.waiting_retry_count}</span><span class="l">due later (retries, scheduled)</span></div>'
    )
    swept = None if ov.last_sweep is None else (ov.at - ov.last_sweep).total_seconds()
    tiles.append(
        f'<div class="tile" title="{_time(ov.last_sweep)} UTC"><span class="n" id="last-sweep">'
        f"{_age(swept)}{' ago' if swept is not None else ''}</span>"
        '<span class="l">last reaper sweep</span></div>'
    )
    return f'<section class="tiles" id="depth">{"".join(tiles)}</section>'


def _throughput(ov: Overview) -> str:
    totals = (
        f'<p><b id="window-completed">{ov.ended("completed")}</b> completed, '
        f'<b id="window-dead-lettered">{ov.ended("dead_lettered")}</b> dead-lettered, '
        f'<b id="window-cancelled">{ov.ended("cancelled")}</b> cancelled '
        '<span class="muted">(a failed attempt that will be retried is not counted)</span></p>'
    )
    return totals + _chart(ov.minutes)


# The per-minute chart: inline SVG, whose sizes are attributes (no inline style).
_SLOT, _BAR, _TOP, _HEIGHT = 48, 30, 18, 100
_COLOURS = (("completed", "#2da44e"), ("dead_lettered", "#cf222e"), ("cancelled", "#8c959f"))


def _chart(minutes: Sequence[MinuteCount]) -> str:
    top = max([1, *(m.completed + m.dead_lettered + m.cancelled for m in minutes)])
    width, base = _SLOT * len(minutes), _TOP + _HEIGHT
    parts = []
    for i, m in enumerate(minutes):
        x, y = i * _SLOT + (_SLOT - _BAR) // 2, base
        label = f"{m.minute.astimezone(UTC):%H:%M} UTC"
        for field, colour in _COLOURS:
            count = int(getattr(m, field))
            height = round(_HEIGHT * count / top)
            if count:
                y -= height
                parts.append(
                    f'<rect x="{x}" y="{y}" width="{_BAR}" height="{height}" fill="{colour}">'
                    f"<title>{label}: {count} {field.replace('_', '-')}</title></rect>"
                )
        total = m.completed + m.dead_lettered + m.cancelled
        middle = i * _SLOT + _SLOT // 2
        if total:
            parts.append(f'<text x="{middle}" y="{y - 4}" text-anchor="middle">{total}</text>')
        parts.append(
            f'<text x="{middle}" y="{base + 14}" text-anchor="middle" fill="#57606a">'
            f"{m.minute.astimezone(UTC):%H:%M}</text>"
        )
    legend = " · ".join(
        f'<tspan fill="{colour}">■</tspan> {name.replace("_", "-")}' for name, colour in _COLOURS
    )
    return (
        f'<svg id="per-minute" width="{width}" height="{base + 36}" font-size="11" '
        f'font-family="system-ui,sans-serif" role="img" aria-label="jobs ended per minute">'
        f'<line x1="0" y1="{base}" x2="{width}" y2="{base}" stroke="#d0d7de"/>'
        f'{"".join(parts)}<text x="0" y="{base + 32}">{legend} (per minute, UTC)</text></svg>'
    )


def _running(ov: Overview) -> str:
    rows = [
        f'<tr data-job="{_e(job.job_id)}"><td class="mono">{_e(job.worker_id or NONE)}</td>'
        f"<td>{_job_link(job.job_id)}</td><td class='num'>{job.attempt}</td>"
        f"<td class='t'>{_time(job.started_at)}</td><td>{_heartbeat(ov, job)}</td>"
        f"<td>{_head(job.prompt_head)}</td></tr>"
        for job in ov.running
    ]
    headers = ["worker", "job", "attempt", "since (UTC)", "last heartbeat", "prompt"]
    return _table(headers, rows, "No job is running: idle workers hold none.", numeric=0b100)


def _heartbeat(ov: Overview, job: RunningJob) -> str:
    text = f"{_age(job.heartbeat_age_seconds)} ago"
    if ov.silent(job):
        text = f'<span class="warn">{text}: silent, the reaper requeues it</span>'
    if job.cancel_requested_at is not None:
        text += " · cancel requested"
    return text


def _ended(jobs: list[JobSummary], section: str, empty: str) -> str:
    rows = [
        f'<tr data-job="{_e(job.id)}"><td>{_job_link(job.id)}</td>'
        f"<td class='t'>{_time(job.completed_at)}</td><td class='num'>{job.attempt}</td>"
        f"<td>{_e(job.end_reason or NONE)}</td><td>{_head(job.error_head)}</td>"
        f"<td>{_head(job.prompt_head, 60)}</td></tr>"
        for job in jobs
    ]
    headers = ["job", "ended (UTC)", "attempts", "end reason", "error", "prompt"]
    return f'<section id="{section}">{_table(headers, rows, empty, numeric=0b100)}</section>'


# -- the job list -------------------------------------------------------------------------


def jobs_page(jobs: list[JobSummary], status: str | None, session: object, limit: int) -> str:
    """The newest-submitted jobs, filtered by status and session, with the filter's form."""
    options = "".join(
        f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>'
        for s in ("", *STATUSES)
    )
    form = (
        '<form method="get" action="/jobs">'
        f'<label>status <select name="status">{options}</select></label>'
        f'<label>session <input name="session" size="38" value="{_e(session or "")}"></label>'
        f'<label>limit <input name="limit" size="5" value="{limit}"></label>'
        "<button>Show</button></form>"
    )
    rows = [_job_row(job) for job in jobs]
    headers = ["job", "status", "session", "pri", "failed", "submitted (UTC)", "now", "prompt"]
    table = _table(headers, rows, "No job matches.", numeric=0b11000)
    shown = f'<p class="muted"><span id="jobs-shown">{len(jobs)}</span> shown, newest first</p>'
    return layout("Jobs", f"<h1>Jobs</h1>{form}{shown}{table}")


def _job_row(job: JobSummary) -> str:
    session = f'<a class="mono" href="{_e(_jobs_href(session=job.session_id))}">'
    return (
        f'<tr data-job="{_e(job.id)}" data-status="{_e(job.status)}">'
        f"<td>{_job_link(job.id)}</td><td>{_status(job.status)}</td>"
        f"<td>{session}{_e(str(job.session_id)[:8])}</a></td>"
        f"<td class='num'>{job.priority}</td>"
        f"<td class='num'>{job.retry_count}/{job.max_retries}</td>"
        f"<td class='t'>{_time(job.created_at)}</td><td>{_e(job.state_note(_time, NONE))}</td>"
        f"<td>{_head(job.prompt_head, 60)}</td></tr>"
    )


# -- a job ---------------------------------------------------------------------------------


def job_page(detail: JobDetail) -> str:
    """A job's fields, prompt, attempts, output and progress events."""
    job = detail.job
    fields = [
        ("status", _status(job.status) + (" cancel requested" if job.cancel_requested_at else "")),
        (
            "session",
            (
                f'<a class="mono" href="{_e(_jobs_href(session=job.session_id))}">'
                f"{_e(job.session_id)}</a>"
            ),
        ),
        ("priority", _e(job.priority)),
        ("failed attempts", f"{job.retry_count} of at most {job.max_retries}"),
        ("submitted", _time(job.created_at)),
        ("due", _time(job.run_at)),
        ("started", _time(job.started_at)),
        ("last heartbeat", _time(job.heartbeat_at)),
        ("ended", _time(job.completed_at)),
        ("worker", f'<span class="mono">{_e(job.worker_id or NONE)}</span>'),
        ("end reason", _e(job.end_reason or NONE)),
        ("error", _e(job.error_message or NONE)),
        ("waiting for", _e(job.waiting_for or NONE)),
        ("idempotency key", _e(job.idempotency_key or NONE)),
    ]
    facts = "".join(f"<dt>{_e(name)}</dt><dd>{value}</dd>" for name, value in fields)
    body = [
        f'<h1>Job <span class="mono" id="job-id">{_e(job.id)}</span></h1>',
        f"<dl>{facts}</dl>",
        f'<h2>Prompt</h2><pre id="prompt">{_e(job.prompt)}</pre>',
        f"<h2>Attempts ({len(detail.attempts)})</h2>",
        _attempts(detail.attempts),
        '<h2>Output <span class="muted">(its end)</span></h2>',
        f'<pre id="output">{_e(job.output)}</pre>'
        if job.output
        else '<p class="muted">No output.</p>',
        (
            f"<h2>Progress events ({len(detail.events)}"
            f"{', the first ones' if detail.events_truncated else ''})</h2>"
        ),
        _events(detail.events),
    ]
    return layout(f"Job {job.id}", "".join(body))


def _attempts(attempts: list[Attempt]) -> str:
    rows = [
        f'<tr data-attempt="{a.attempt}"><td class="num">{a.attempt}</td>'
        f'<td class="mono">{_e(a.worker_id or NONE)}</td>'
        f'<td class="t">{_time(a.started_at)}</td>'
        f"<td class='t'>{_time(a.ended_at) if a.ended_at else 'running'}</td>"
        f"<td class='num'>{_took(a)}</td><td>{_e(a.end_reason or NONE)}</td>"
        f"<td>{_e(a.error_message or NONE)}</td></tr>"
        for a in attempts
    ]
    headers = ["#", "worker", "started (UTC)", "ended (UTC)", "took", "end reason", "error"]
    return _table(headers, rows, "No attempt yet.", numeric=0b10001)


def _took(attempt: Attempt) -> str:
    return NONE if attempt.seconds is None else f"{attempt.seconds:.1f} s"


def _events(events: list[Event]) -> str:
    rows = [
        f'<tr data-event="{e.id}"><td class="num">{e.attempt}</td>'
        f'<td class="t">{_time(e.created_at)}</td>'
        f'<td>{_e(e.kind)}</td><td class="mono">'
        f"{_e(json.dumps(e.payload, ensure_ascii=False))}</td></tr>"
        for e in events
    ]
    return _table(["attempt", "at (UTC)", "kind", "payload"], rows, "No progress event.", 1)
