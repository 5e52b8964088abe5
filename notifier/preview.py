"""Render a composed message as one self-contained HTML page.

Used by the outbox (a ``.html`` beside each ``.eml``) and by the Jupyter
preview, so both show exactly what the recipient would see: the headers, the
HTML body with inline images turned into data URIs, and the attachments.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from email.message import EmailMessage

_PLACEHOLDER = (
    "data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' width='240' height='40'>"
    "<text x='8' y='24' font-size='13'>image not shown in preview</text></svg>"
)
_CID = re.compile(r"""(["'(])cid:([^"')\s]+)""")


def human_size(size: int) -> str:
    """1536 -> '1.5 KB'."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def body_parts(message: EmailMessage) -> tuple[str | None, str | None]:
    """The (html, text) bodies of a message, either may be None."""
    html_part = message.get_body(preferencelist=("html",))
    text_part = message.get_body(preferencelist=("plain",))
    return (
        html_part.get_content() if html_part is not None else None,
        text_part.get_content() if text_part is not None else None,
    )


def inline_images(message: EmailMessage) -> dict[str, tuple[str, bytes]]:
    """Content-ID (without brackets) -> (mime type, bytes) for every inline part."""
    found = {}
    for part in message.walk():
        cid = part.get("Content-ID")
        if cid and not part.is_multipart():
            found[cid.strip("<>")] = (part.get_content_type(), part.get_payload(decode=True) or b"")
    return found


def attachments(message: EmailMessage) -> list[tuple[str, str, bytes]]:
    """(file name, mime type, bytes) of every attachment."""
    return [
        (
            part.get_filename() or "attachment",
            part.get_content_type(),
            part.get_payload(decode=True) or b"",
        )
        for part in message.iter_attachments()
        if part.get_content_disposition() == "attachment"
    ]


def html_with_data_uris(
    body: str, images: dict[str, tuple[str, bytes]], budget: int | None = None
) -> str:
    """Replace ``cid:`` references by data URIs so a browser can show the images.

    With ``budget`` (bytes), images past it are replaced by a tiny placeholder.
    """
    spent = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal spent
        cid = match.group(2)
        if cid not in images:
            return match.group(0)
        mime, data = images[cid]
        spent += len(data)
        if budget is not None and spent > budget:
            return f"{match.group(1)}{_PLACEHOLDER}"
        return f"{match.group(1)}data:{mime};base64,{base64.b64encode(data).decode()}"

    return _CID.sub(substitute, body)


def _header_rows(
    message: EmailMessage, bcc: Sequence[str], overrides: dict[str, str] | None = None
) -> str:
    rows = []
    for name in ("From", "To", "Cc", "Reply-To", "Subject", "Date"):
        value = (overrides or {}).get(name) or message.get(name)
        if value:
            rows.append((name, str(value)))
    if bcc:
        rows.append(("Bcc", ", ".join(bcc) + "  (envelope only, not in headers)"))
    return "".join(
        f'<tr><th style="text-align:left;padding:2px 12px 2px 0;color:#555;vertical-align:top">'
        f'{html.escape(name)}</th><td style="padding:2px 0">{html.escape(value)}</td></tr>'
        for name, value in rows
    )


def render_preview(
    message: EmailMessage,
    bcc: Sequence[str] = (),
    *,
    standalone: bool = True,
    overrides: dict[str, str] | None = None,
    image_budget: int | None = None,
) -> str:
    """The message as HTML: headers, body (HTML or text), attachments with sizes.

    ``overrides`` replaces shown header values; ``image_budget`` bounds embedded image bytes.
    """
    html_body, text_body = body_parts(message)
    if html_body is not None:
        body = html_with_data_uris(html_body, inline_images(message), image_budget)
        # Keep only the body's content when the part is a whole HTML document.
        match = re.search(r"<body[^>]*>(.*)</body>", body, re.S | re.I)
        body = match.group(1) if match else body
    else:
        body = f'<pre style="white-space:pre-wrap;font-family:inherit">{html.escape(text_body or "")}</pre>'
    files = attachments(message)
    if files:
        items = "".join(
            f"<li>{html.escape(name)} <span style='color:#777'>({html.escape(mime)}, "
            f"{human_size(len(data))})</span></li>"
            for name, mime, data in files
        )
        files_html = f'<div style="border-top:1px solid #ddd;margin-top:12px;padding-top:8px"><b>Attachments</b><ul style="margin:4px 0">{items}</ul></div>'
    else:
        files_html = ""
    card = (
        '<div class="notifier-email" style="border:1px solid #ccc;border-radius:6px;'
        'max-width:900px;font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;font-size:14px">'
        '<table style="background:#f6f8fa;width:100%;border-bottom:1px solid #ccc;padding:8px 12px;'
        f'border-collapse:separate">{_header_rows(message, bcc, overrides)}</table>'
        f'<div style="padding:12px">{body}{files_html}</div></div>'
    )
    if not standalone:
        return card
    title = html.escape(str(message.get("Subject", "")))
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title></head>'
        f'<body style="margin:16px">{card}</body></html>'
    )
