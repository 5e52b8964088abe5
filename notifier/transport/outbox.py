"""Outbox transport: the embedded default when no SMTP server is configured.

Each message becomes ``<stamp>-<subject>.eml`` (open it in any mail client) and a
``.html`` preview beside it in which inline images are data URIs, so a browser
shows what the recipient would see. ``index.html`` lists them, newest first.
"""

from __future__ import annotations

import html
import os
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from notifier.preview import render_preview
from notifier.transport.base import Outgoing, RecipientResult, ResultCallback, SendResult

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(text: str, limit: int = 40) -> str:
    return _UNSAFE.sub("-", text).strip("-")[:limit] or "message"


class OutboxTransport:
    """Writes messages to a folder instead of sending them."""

    name = "outbox"

    def __init__(self, directory: str | os.PathLike[str] = "outbox") -> None:
        self.directory = Path(directory)

    def send(
        self, messages: Sequence[Outgoing], on_result: ResultCallback | None = None
    ) -> list[SendResult]:
        self.directory.mkdir(parents=True, exist_ok=True)
        results = []
        for out in messages:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            stem = f"{stamp}-{_slug(out.subject)}-{uuid.uuid4().hex[:6]}"
            eml = self.directory / f"{stem}.eml"
            preview = self.directory / f"{stem}.html"
            bcc = [r for r in out.recipients if r not in _header_addresses(out)]
            _write_atomic(eml, out.data)
            _write_atomic(preview, render_preview(out.message, bcc).encode("utf-8"))
            results.append(
                SendResult(
                    message_id=out.message_id,
                    subject=out.subject,
                    transport=self.name,
                    recipients=[
                        RecipientResult(a, True, None, "written to outbox") for a in out.recipients
                    ],
                    location=str(preview.resolve()),
                )
            )
            if on_result is not None:
                on_result(len(results) - 1, results[-1])
        self.write_index()
        return results

    def write_index(self) -> Path:
        """Regenerate ``index.html``: every preview in the outbox, newest first."""
        rows = []
        for page in sorted(self.directory.glob("*.html"), reverse=True):
            if page.name == "index.html":
                continue
            eml = page.with_suffix(".eml")
            rows.append(
                f'<li><a href="{html.escape(page.name)}">{html.escape(page.stem)}</a>'
                + (f' · <a href="{html.escape(eml.name)}">.eml</a>' if eml.exists() else "")
                + "</li>"
            )
        index = self.directory / "index.html"
        _write_atomic(
            index,
            (
                '<!DOCTYPE html><html><head><meta charset="utf-8"><title>notifier outbox</title>'
                '</head><body style="font-family:sans-serif"><h1>notifier outbox</h1>'
                f"<p>{len(rows)} message(s), newest first.</p><ul>{''.join(rows)}</ul></body></html>"
            ).encode(),
        )
        return index


def _header_addresses(out: Outgoing) -> set[str]:
    from email.utils import getaddresses

    fields = [str(out.message.get(h, "")) for h in ("To", "Cc")]
    return {addr for _, addr in getaddresses(fields) if addr}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
