"""Queue entries as planning makes them, for ledger tests (their content does not matter)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from notifier.ledger import Ledger, RecipientStatus
from notifier.ledger.queue import Answer, NewMessage

FAR = datetime(2100, 1, 1, tzinfo=timezone.utc)


def message(
    *recipients: str,
    key: str | None = None,
    chart: bytes | None = None,
    expires_at: datetime = FAR,
    on_unknown: str = "skip",
    purpose: str = "report",
) -> NewMessage:
    """A queue entry as planning makes one (the spec's content does not matter here)."""
    parts = {hashlib.sha256(chart).hexdigest(): chart} if chart is not None else {}
    spec = {
        "subject": "Report",
        "images": [
            {"sha256": sha, "mime_type": "image/png", "filename": "c.png", "cid": "c1"}
            for sha in parts
        ],
        "attachments": [],
    }
    return NewMessage(
        email_key=key or "k:" + ",".join(recipients),
        purpose=purpose,
        message_id=f"<{key or recipients[0]}@example.com>",
        subject="Report",
        sender="reports@example.com",
        size=100,
        spec=spec,
        parts=parts,
        recipients=tuple(recipients),
        expires_at=expires_at,
        on_unknown=on_unknown,
    )


def deliver_everything(ledger: Ledger) -> None:
    """Record every due row as delivered (as a delivery pass would)."""
    for due in ledger.queue.claim_due(limit=1000):
        ids = ledger.queue.mark_sending([r.row_id for r in due.recipients])
        ledger.queue.record([Answer(i, RecipientStatus.DELIVERED, 250, "OK") for i in ids])
