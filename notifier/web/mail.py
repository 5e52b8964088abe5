"""Emails exactly as they went out: rebuilt from the queue's stored spec and parts (the same
code delivery uses), or read from the outbox; one view for both.

The page shows the headers, the envelope (Bcc), every recipient's outcome with the server's
reply, the attachments (downloads) and the ``.eml``; the body, arbitrary HTML from notebook
code, is shown in a sandboxed iframe served by :func:`notifier.web.security.sandboxed`.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import tzinfo
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifier.delivery.planning import outgoing_from, spec_parts
from notifier.ledger import Ledger, Run
from notifier.ledger.queries import mail_row
from notifier.mail.model import Outgoing
from notifier.mail.preview import attachments, body_parts, html_with_data_uris, inline_images
from notifier.web.pages import get_run, render
from notifier.web.security import download, inside, sandboxed
from notifier.web.state import Dashboard

HEADERS = ("From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID")
OUTBOX_LIMIT = 200
_EML = re.compile(r"^[A-Za-z0-9._-]+\.eml$")


@dataclass
class EmailView:
    """One email for the template: headers, envelope, outcomes, attachments, links."""

    subject: str
    purpose: str
    headers: list[tuple[str, str]]
    bcc: list[str]
    attachments: list[tuple[int, str, str, int]]  # index, file name, type, size
    images: int
    body_url: str
    eml_url: str
    attachment_url: str  # + index
    recipients: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None


def _view(message: EmailMessage, envelope: list[str], base: str, **extra: Any) -> EmailView:
    shown = {
        addr.lower()
        for _, addr in getaddresses(message.get_all("To", []) + message.get_all("Cc", []))
    }
    files = attachments(message)
    return EmailView(
        subject=str(message.get("Subject", "")),
        headers=[(name, str(message[name])) for name in HEADERS if message[name] is not None],
        bcc=[a for a in envelope if a.lower() not in shown],
        attachments=[(i, name, mime, len(data)) for i, (name, mime, data) in enumerate(files)],
        images=len(inline_images(message)),
        body_url=f"{base}/body",
        eml_url=f"{base}.eml",
        attachment_url=f"{base}/attachments/",
        **extra,
    )


def stored_outgoing(ledger: Ledger, run: Run, message_pk: int) -> tuple[Outgoing, list[str], Any]:
    """A queued message of ``run`` rebuilt by the code that delivers it: (outgoing, envelope,
    stored row); ``outgoing.data`` are the bytes that went on the wire."""
    due = ledger.queue.message(message_pk)
    if due is None or due.run_id != run.run_id:
        raise HTTPException(404, "No such email in this run.")
    envelope = [r.address for r in due.recipients]
    parts = ledger.queue.load_parts(spec_parts(due.spec))
    return outgoing_from(due, parts, envelope), envelope, due


def stored_message(
    ledger: Ledger, run: Run, message_pk: int
) -> tuple[EmailMessage, list[str], Any]:
    """A queued message of ``run`` as sent, parsed: (message, envelope, stored row)."""
    outgoing, envelope, due = stored_outgoing(ledger, run, message_pk)
    return outgoing.message, envelope, due


def run_emails(ledger: Ledger, run: Run, zone: tzinfo | None) -> list[EmailView]:
    """Every email the run queued (reports, failure and recovery notices), in order."""
    views = []
    rows: dict[int, list[dict[str, Any]]] = {}
    for row in ledger.queue.rows(run_ids=[run.run_id]):
        rows.setdefault(row.message_pk, []).append(mail_row(row, zone))
    for pk in ledger.queue.messages_of(run.run_id):
        base = f"/runs/{run.run_id}/emails/{pk}"
        try:
            message, envelope, due = stored_message(ledger, run, pk)
        except LookupError as missing:  # parts purged: say so, show what the spec has
            due = ledger.queue.message(pk)
            views.append(
                EmailView(
                    subject=due.subject if due else "",
                    purpose=due.purpose if due else "",
                    headers=[],
                    bcc=[],
                    attachments=[],
                    images=0,
                    body_url="",
                    eml_url="",
                    attachment_url="",
                    recipients=rows.get(pk, []),
                    problem=str(missing),
                )
            )
            continue
        views.append(
            _view(message, envelope, base, purpose=due.purpose, recipients=rows.get(pk, []))
        )
    return views


def body_html(message: EmailMessage) -> str:
    """The body as the recipient's mail client shows it: HTML with inline images, or text."""
    html_body, text_body = body_parts(message)
    if html_body is not None:
        return html_with_data_uris(html_body, inline_images(message))
    escaped = html.escape(text_body or "")
    return f'<pre style="white-space:pre-wrap;font-family:sans-serif">{escaped}</pre>'


def _stored(request: Request) -> tuple[EmailMessage, list[str]]:
    _dashboard, ledger, run = get_run(request)
    try:
        message, envelope, _due = stored_message(ledger, run, request.path_params["pk"])
    except LookupError as missing:
        raise HTTPException(410, f"This email can no longer be rebuilt: {missing}.") from None
    return message, envelope


def email_body(request: Request) -> Response:
    """``/runs/{run_id}/emails/{pk}/body``: the body, sandboxed, for the iframe."""
    message, _ = _stored(request)
    return sandboxed(body_html(message))


def email_eml(request: Request) -> Response:
    """``/runs/{run_id}/emails/{pk}.eml``: the bytes that went on the wire (RFC 5322)."""
    _dashboard, ledger, run = get_run(request)
    try:
        outgoing, _, _ = stored_outgoing(ledger, run, request.path_params["pk"])
    except LookupError as missing:
        raise HTTPException(410, f"This email can no longer be rebuilt: {missing}.") from None
    return download(outgoing.data, f"email-{request.path_params['pk']}.eml", "message/rfc822")


def _attachment(message: EmailMessage, index: int) -> Response:
    files = attachments(message)
    if not 0 <= index < len(files):
        raise HTTPException(404, "No such attachment.")
    name, mime, data = files[index]
    return download(data, name, mime)


def email_attachment(request: Request) -> Response:
    """``/runs/{run_id}/emails/{pk}/attachments/{index}``: one attachment, as a download."""
    message, _ = _stored(request)
    return _attachment(message, request.path_params["index"])


# ---------------------------------------------------------------------- the outbox


def outbox_messages(folder: Path, limit: int = OUTBOX_LIMIT) -> list[dict[str, str]]:
    """The newest ``.eml`` files of the outbox with From/To/Subject/Date."""
    try:
        names = sorted((p for p in folder.glob("*.eml") if p.is_file()), reverse=True)[:limit]
    except OSError:
        return []
    parser = BytesParser(policy=policy.default)
    found = []
    for path in names:
        try:
            with open(path, "rb") as handle:
                headers = parser.parse(handle, headersonly=True)
        except OSError:
            continue
        found.append(
            {
                "name": path.name,
                "subject": str(headers.get("Subject", "")),
                "to": str(headers.get("To", "")),
                "date": str(headers.get("Date", "")),
            }
        )
    return found


def outbox_file(request: Request) -> EmailMessage:
    """The outbox message named in the URL (only a plain ``.eml`` name inside the outbox)."""
    dashboard: Dashboard = request.app.state.dashboard
    name = request.path_params["name"] + ".eml"
    path = inside(dashboard.settings.outbox_dir, name) if _EML.match(name) else None
    if path is None:
        raise HTTPException(404, "No such message in the outbox.")
    with open(path, "rb") as handle:
        return BytesParser(policy=policy.default).parse(handle)  # type: ignore[return-value]


def outbox_page(request: Request) -> Response:
    """``/outbox``: what was written to the outbox, newest first."""
    dashboard: Dashboard = request.app.state.dashboard
    folder = dashboard.settings.outbox_dir
    return render(request, "outbox.html", messages=outbox_messages(folder), folder=folder.resolve())


def outbox_message(request: Request) -> Response:
    """``/outbox/{name}``: one outbox message in the email view."""
    message = outbox_file(request)
    name = request.path_params["name"]
    view = _view(message, [], f"/outbox/{name}", purpose="outbox")
    return render(request, "outbox_message.html", email=view, name=name)


def outbox_body(request: Request) -> Response:
    """``/outbox/{name}/body``: the body, sandboxed."""
    return sandboxed(body_html(outbox_file(request)))


def outbox_attachment(request: Request) -> Response:
    """``/outbox/{name}/attachments/{index}``."""
    return _attachment(outbox_file(request), request.path_params["index"])


def outbox_eml(request: Request) -> Response:
    """``/outbox/{name}.eml``."""
    message = outbox_file(request)
    return download(message.as_bytes(), request.path_params["name"] + ".eml", "message/rfc822")


def outbox_name(location: str | None, folder: Path) -> str | None:
    """The outbox message a recipient row's location names (checked to be in the outbox)."""
    if not location:
        return None
    path = inside(folder, Path(location).with_suffix(".eml"))
    return path.stem if path is not None else None


def routes() -> list[Route]:
    """Emails of runs and of the outbox."""
    return [
        Route("/runs/{run_id}/emails/{pk:int}/body", email_body),
        Route("/runs/{run_id}/emails/{pk:int}.eml", email_eml),
        Route("/runs/{run_id}/emails/{pk:int}/attachments/{index:int}", email_attachment),
        Route("/outbox", outbox_page),
        Route("/outbox/{name}.eml", outbox_eml),
        Route("/outbox/{name}/body", outbox_body),
        Route("/outbox/{name}/attachments/{index:int}", outbox_attachment),
        Route("/outbox/{name}", outbox_message),
    ]
