"""Render a composed message as one self-contained HTML page.

Used by the outbox (a ``.html`` beside each ``.eml``) and by the Jupyter
preview, so both show exactly what the recipient would see: the headers, the
HTML body with inline images turned into data URIs, and the attachments (as
download links while they fit a size budget).

Every element carries inline styles that set what the host page might change:
JupyterLab's stylesheet (also in nbconvert's archived HTML) right-aligns table
cells, centres tables, stripes rows and recolours text for its dark theme, and an
inline style wins over all of that, so the card looks the same in Lab, in the
archived output and in the outbox.
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
# Attachment bytes the preview embeds as download links (data: URIs), per message.
ATTACHMENT_BUDGET = 1024 * 1024

_CARD_STYLE = (
    "border:1px solid #ccc;border-radius:6px;max-width:900px;background:#fff;color:#1f2328;"
    "text-align:left;font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;"
    "font-size:14px;line-height:1.4"
)
_HEADERS_STYLE = (
    "background:#f6f8fa;width:100%;border:none;border-bottom:1px solid #ccc;"
    "border-collapse:separate;border-spacing:0;padding:8px 12px;margin:0;table-layout:auto;"
    "font-size:14px;color:#1f2328"
)
_ROW_STYLE = "background:#f6f8fa;border:none"
_NAME_STYLE = (
    "text-align:left;vertical-align:top;padding:2px 12px 2px 0;border:none;color:#555;"
    "font-weight:600;white-space:nowrap;width:1%;line-height:1.4;background:#f6f8fa"
)
_VALUE_STYLE = (
    "text-align:left;vertical-align:top;padding:2px 0;border:none;color:#1f2328;"
    "font-weight:normal;line-height:1.4;background:#f6f8fa;word-break:break-word"
)
_LINK_STYLE = "color:#0969da;text-decoration:underline"


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
        f'<tr style="{_ROW_STYLE}"><th style="{_NAME_STYLE}">{html.escape(name)}</th>'
        f'<td style="{_VALUE_STYLE}">{html.escape(value)}</td></tr>'
        for name, value in rows
    )


def _attachment_items(files: list[tuple[str, str, bytes]], budget: int | None) -> str:
    """One ``<li>`` per file: a download link while the budget lasts, else a note."""
    items = []
    left = ATTACHMENT_BUDGET if budget is None else budget
    for name, mime, data in files:
        label = html.escape(name)
        details = f"({html.escape(mime)}, {human_size(len(data))})"
        if len(data) <= left:
            left -= len(data)
            uri = f"data:{mime};base64,{base64.b64encode(data).decode()}"
            link = (
                f'<a href="{html.escape(uri, quote=True)}" download="{html.escape(name, quote=True)}"'
                f' style="{_LINK_STYLE}">{label}</a>'
            )
            items.append(f"<li>{link} <span style='color:#777'>{details}</span></li>")
        else:
            items.append(
                f"<li>{label} <span style='color:#777'>{details}, too large to open from this "
                "preview; it is in the email</span></li>"
            )
    return "".join(items)


def render_preview(
    message: EmailMessage,
    bcc: Sequence[str] = (),
    *,
    standalone: bool = True,
    overrides: dict[str, str] | None = None,
    image_budget: int | None = None,
    attachment_budget: int | None = None,
) -> str:
    """The message as HTML: headers, body (HTML or text), attachments with sizes.

    ``overrides`` replaces shown header values; ``image_budget`` bounds embedded image bytes;
    attachments up to ``attachment_budget`` bytes in all (default :data:`ATTACHMENT_BUDGET`)
    are download links, larger ones are listed with a note.
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
        items = _attachment_items(files, attachment_budget)
        files_html = (
            '<div style="border-top:1px solid #ddd;margin-top:12px;padding-top:8px">'
            f'<b>Attachments</b><ul style="margin:4px 0;padding-left:24px">{items}</ul></div>'
        )
    else:
        files_html = ""
    card = (
        f'<div class="notifier-email" style="{_CARD_STYLE}">'
        f'<table style="{_HEADERS_STYLE}"><tbody>{_header_rows(message, bcc, overrides)}'
        f'</tbody></table><div style="padding:12px">{body}{files_html}</div></div>'
    )
    if not standalone:
        return card
    title = html.escape(str(message.get("Subject", "")))
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title></head>'
        f'<body style="margin:16px">{card}</body></html>'
    )
