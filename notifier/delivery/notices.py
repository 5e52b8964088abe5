"""The emails notifier writes itself: a run failed, a run could not start, an alert
recovered, mail could not be delivered. One builder each, one rule for who gets them.

**Who hears about problems** (:attr:`notifier.jobs.model.Job.failure_recipients`): the job's
``on_failure:`` (or ``notifier run --on-failure``) when set, else its ``to:`` and ``cc:``
recipients; never ``bcc:`` recipients, who are often customers or a mailing list that
should not see a traceback. Notices go through the outbound queue like reports, so a mail outage delays
them instead of losing them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from notifier.mail.model import Email
from notifier.mail.parts import Part

_RED = "#b00020"


def one_line(text: str, limit: int = 160) -> str:
    """The first line of ``text``, without control characters, clipped (a safe subject)."""
    first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    cleaned = "".join(ch if ch.isprintable() else " " for ch in first)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def pre(text: str) -> str:
    """``text`` as a preformatted block (kept verbatim in the plain-text part too)."""
    return (
        "<pre style='background:#f6f8fa;padding:8px;border:1px solid #ddd;white-space:pre-wrap;"
        f"font-size:12px'>{html.escape(text)}</pre>"
    )


def _facts(rows: Iterable[tuple[str, Any]]) -> str:
    cells = "".join(
        "<tr><th style='text-align:left;padding-right:12px;vertical-align:top'>"
        f"{html.escape(label)}</th><td style='text-align:left'>{html.escape(str(value))}</td></tr>"
        for label, value in rows
        if value not in (None, "")
    )
    return f"<table style='font-family:Arial,sans-serif;font-size:13px'>{cells}</table>"


def run_failed_email(
    *,
    name: str,
    notebook: str | Path,
    run_id: str,
    error: str,
    failure: dict[str, Any] | None,
    run_folder: str | Path,
    recipients: Sequence[str],
    output_html: Path | None = None,
) -> Email:
    """A run's notebook failed (cell error, timeout, dead kernel, an email it built)."""
    failure = failure or {}
    blocks = [
        f"<h2 style='color:{_RED}'>Run failed: {html.escape(name)}</h2>",
        _facts(
            (
                ("Notebook", notebook),
                ("Run id", run_id),
                ("Error", error or "unknown"),
                ("Run folder", run_folder),
            )
        ),
    ]
    if failure.get("source"):
        blocks.append("<h3>Failing cell</h3>" + pre(failure["source"]))
    if failure.get("traceback") or failure.get("evalue"):
        blocks.append("<h3>Traceback</h3>" + pre(failure.get("traceback") or failure["evalue"]))
    attachments = []
    if output_html is not None and output_html.is_file():
        attachments.append(Part(output_html.read_bytes(), "text/html", f"{name}-output.html"))
        blocks.append(
            f"<p>The executed notebook is attached as {html.escape(name)}-output.html "
            f"(also in {html.escape(str(run_folder))}).</p>"
        )
    return Email(
        subject=f"[notifier] FAILED: {one_line(name, 60)}: {one_line(error or 'error')}",
        to=list(recipients),
        html="\n".join(blocks),
        attachments=attachments,
    )


def not_started_email(
    *,
    name: str,
    notebook: str | Path,
    slot: datetime,
    message: str,
    fix: str | None,
    recipients: Sequence[str],
) -> Email:
    """A run could not even start (notebook gone, a parameter renamed, runs folder)."""
    body = (
        f"<h2 style='color:{_RED}'>Run failed before it started: {html.escape(name)}</h2>"
        f"<p>{html.escape(message)}</p>"
        + (f"<p><b>Fix:</b> {html.escape(fix)}</p>" if fix else "")
        + _facts((("Notebook", notebook), ("Slot", slot.isoformat())))
    )
    return Email(
        subject=f"[notifier] FAILED: {one_line(name, 60)}: {one_line(message)}",
        to=list(recipients),
        html=body,
    )


def recovery_email(
    *,
    name: str,
    reason: str,
    alert_started: str,
    visible: Sequence[str],
    hidden: Sequence[str],
) -> Email:
    """The first quiet run after an alert: "back to normal", to whoever got the alert."""
    body = (
        f"<p><b>{html.escape(name)}</b> is back to normal: {html.escape(reason)}.</p>"
        f"<p>The alert started with slot {html.escape(alert_started)}.</p>"
    )
    return Email(
        subject=f"RECOVERED: {one_line(name, 120)}", to=list(visible), bcc=list(hidden), html=body
    )


def delivery_problems_email(
    *,
    name: str,
    run_id: str,
    problems: Sequence[tuple[str, str, str, str]],
    recipients: Sequence[str],
) -> Email:
    """Some emails of a run did not reach their recipients: (subject, recipient, status, reply)."""
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td style='text-align:left;padding:2px 8px;border-bottom:1px solid #eee'>"
            f"{html.escape(value)}</td>"
            for value in problem
        )
        + "</tr>"
        for problem in problems
    )
    body = (
        f"<h2 style='color:{_RED}'>Not delivered: {html.escape(name)}</h2>"
        f"<p>Some emails of run {html.escape(run_id)} did not reach their recipients. "
        "<code>notifier history</code> and <code>notifier queue</code> show them; "
        "<code>notifier queue retry ID</code> sends one again.</p>"
        "<table style='font-family:Arial,sans-serif;font-size:13px;border-collapse:collapse'>"
        "<tr><th style='text-align:left'>Subject</th><th style='text-align:left'>Recipient</th>"
        "<th style='text-align:left'>Outcome</th><th style='text-align:left'>Server's reply"
        f"</th></tr>{rows}</table>"
    )
    return Email(
        subject=f"[notifier] NOT DELIVERED: {one_line(name, 60)} ({len(problems)} recipient(s))",
        to=list(recipients),
        html=body,
    )
