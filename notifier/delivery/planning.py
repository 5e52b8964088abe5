"""Planning: an :class:`~notifier.mail.model.Email` becomes a queue entry, and back.

Planning writes each email once (so an invalid address, a line break in a header or an
oversized message fails the run with the real cause before anything is queued), fixes
its Message-ID and Date, and stores it as a *spec* (headers and bodies as JSON, parts by
sha256) plus its parts. Delivery rebuilds the same message from the spec, so the email
that goes out, the one the dashboard shows and the one a retry sends are the same.
Both sides use the fast writer (:mod:`notifier.mail.mime`); the text/plain rendering of
an HTML body is made once, at planning, and kept in the spec (``text_alt``).

The content key identifies an email within a run whatever order the notebook built it
in: ``report.email(..., key="region-north")`` when the notebook gives one, else a hash
of the subject, the recipients and the body (inline images by their bytes, since
Content-IDs are new in every execution). A re-execution that builds the same emails in
another order therefore adds nothing to the queue; one that changes their content adds
new emails.

A key is stored without losing what tells two keys apart: a key made only of
``[A-Za-z0-9_.:@=+-]`` (at most 80 characters) is kept as it is, any other one becomes a
readable prefix plus a hash of the whole key, so ``customer-Jürgen`` and
``customer-Jörgen`` stay two emails. Two emails of one run with the same key are refused
(:func:`check_keys`). Each planned email also carries a fingerprint of what it says
(``content_sha``: everything but the Bcc envelope), so the queue never adds recipients to
an email that says something else (:meth:`~notifier.ledger.queue.OutboundQueue.enqueue`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from email.utils import formatdate, make_msgid
from typing import Any

from notifier.errors import MessageError
from notifier.ledger.queue import DueMessage, NewMessage
from notifier.mail.mime import write
from notifier.mail.model import Email, InlineImage, Outgoing, check, text_alternative
from notifier.mail.parts import Part

SPEC_VERSION = 1
_KEY_SAFE = re.compile(r"[^A-Za-z0-9_.:@=+-]+")
_KEY_KEPT = 80  # a clean key up to this long is stored as it is
_KEY_PREFIX = 60  # else: this much of it, cleaned, for people reading `notifier queue`


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_key(key: str) -> str:
    """The queue's form of ``report.email(..., key=...)``: different keys stay different.

    A clean key (``[A-Za-z0-9_.:@=+-]``, at most 80 characters) is kept: ``k:region-north``.
    Any other becomes its cleaned start plus a hash of the whole key:
    ``k:customer-J-rgen~<32 hex>``; ``~`` never occurs in a clean key, so the two forms
    cannot meet.
    """
    cleaned = _KEY_SAFE.sub("-", key)
    if cleaned == key and len(key) <= _KEY_KEPT:
        return "k:" + key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"k:{cleaned[:_KEY_PREFIX]}~{digest}"


def _canonical(mail: Email, *, envelope: bool) -> dict[str, Any]:
    html = mail.html
    if html is not None:
        for image in mail.images:  # Content-IDs are random per execution: use the bytes
            html = html.replace(f"cid:{image.cid}", f"cid:{_sha(image.part.data)}")
    canonical = {
        "subject": mail.subject,
        "to": sorted(a.strip().lower() for a in mail.to),
        "cc": sorted(a.strip().lower() for a in mail.cc),
        "reply_to": sorted(a.strip().lower() for a in mail.reply_to),
        "sender": mail.sender,
        "html": html,
        "text": mail.text,
        "images": sorted(_sha(i.part.data) for i in mail.images),
        "attachments": [[p.filename, p.mime_type, _sha(p.data)] for p in mail.attachments],
        "headers": sorted(mail.headers.items()),
    }
    if envelope:
        canonical["bcc"] = sorted(a.strip().lower() for a in mail.bcc)
    return canonical


def _digest(canonical: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode("utf-8")).hexdigest()


def content_key(mail: Email) -> str:
    """The email's identity within a run: its ``key``, or a hash of what it says and to whom."""
    if mail.key:
        return stored_key(mail.key)
    return "h:" + _digest(_canonical(mail, envelope=True))[:40]


def content_sha(mail: Email, default_sender: str = "") -> str:
    """What the email says, whoever gets it in Bcc: equal for the same email planned again."""
    canonical = _canonical(mail, envelope=False)
    canonical["sender"] = mail.sender or default_sender
    return _digest(canonical)


def check_keys(mails: Sequence[Email]) -> None:
    """Refuse two emails of one run with the same ``key=`` (MessageError naming both).

    A key names one email of a run: with two, the second would be taken for a re-attempt
    of the first (its recipients could get the first one's content).
    """
    seen: dict[str, Email] = {}
    for mail in mails:
        if mail.key is not None and not isinstance(mail.key, str):
            raise MessageError(
                f"The key of the email {mail.subject!r} is {mail.key!r}, not text.",
                'write it as text, e.g. report.email(..., key=f"customer-{id}")',
            )
        if not mail.key:
            continue
        first = seen.setdefault(mail.key, mail)
        if first is not mail:
            raise MessageError(
                f"Two emails of this run have the same key {mail.key!r}: {first.subject!r} "
                f"and {mail.subject!r}; a key names one email of a run.",
                'give each email its own key, e.g. report.email(..., key=f"customer-{id}"), '
                "or leave key= out",
            )


def plan_email(
    mail: Email,
    *,
    purpose: str,
    default_sender: str,
    max_size: int | None,
    expires_at: datetime,
    transport: str = "default",
    on_unknown: str = "skip",
    key: str | None = None,
    optional_attachments: bool = False,
) -> NewMessage:
    """Compose ``mail`` (raising MessageError for what cannot be sent) into a queue entry.

    ``optional_attachments``: a notice whose attachments may be left out when the server
    refuses the message as too large (the failure email's output notebook).
    """
    checked = check(mail, default_sender=default_sender)
    message_id = make_msgid(domain=checked.sender.domain)
    date = formatdate(localtime=True)
    text = text_alternative(mail)
    outgoing = write(
        mail,
        default_sender=default_sender,
        message_id=message_id,
        date=date,
        text=text,
        max_size=max_size,
        checked=checked,
    )
    parts: dict[str, bytes] = {}

    def ref(part: Part) -> dict[str, str]:
        sha = _sha(part.data)
        parts[sha] = part.data
        return {"sha256": sha, "mime_type": part.mime_type, "filename": part.filename}

    spec = {
        "v": SPEC_VERSION,
        "subject": mail.subject,
        "sender": mail.sender or default_sender,
        "to": list(mail.to),
        "cc": list(mail.cc),
        "reply_to": list(mail.reply_to),
        "headers": dict(mail.headers),
        "date": date,
        "message_id": message_id,
        "html": mail.html,
        "text": mail.text,
        # the text/plain part made from the HTML (rendered once, here)
        "text_alt": text if mail.text is None and mail.html is not None else None,
        "images": [dict(ref(i.part), cid=i.cid) for i in mail.images],
        "attachments": [ref(p) for p in mail.attachments],
        "optional_attachments": optional_attachments,
    }
    return NewMessage(
        email_key=key or content_key(mail),
        content_sha=content_sha(mail, default_sender),
        purpose=purpose,
        message_id=message_id,
        subject=mail.subject,
        sender=outgoing.sender,
        size=outgoing.size,
        spec=spec,
        parts=parts,
        recipients=outgoing.recipients,
        expires_at=expires_at,
        transport=transport,
        on_unknown=on_unknown,
    )


def spec_parts(spec: dict) -> list[str]:
    """The sha256 of every part a spec refers to."""
    return [e["sha256"] for e in (*spec.get("images", []), *spec.get("attachments", []))]


def email_from_spec(spec: dict, parts: dict[str, bytes], *, attachments: bool = True) -> Email:
    """The :class:`Email` a stored spec describes (Bcc lives in the queue rows only)."""

    def part(entry: dict) -> Part:
        try:
            data = parts[entry["sha256"]]
        except KeyError:
            raise LookupError(
                f"the part {entry['filename']!r} is missing from the ledger"
            ) from None
        return Part(data, entry["mime_type"], entry["filename"])

    return Email(
        subject=spec.get("subject", ""),
        to=list(spec.get("to", [])),
        cc=list(spec.get("cc", [])),
        sender=spec.get("sender"),
        reply_to=list(spec.get("reply_to", [])),
        headers=dict(spec.get("headers", {})),
        html=spec.get("html"),
        text=spec.get("text"),
        images=[InlineImage(e["cid"], part(e)) for e in spec.get("images", [])],
        attachments=[part(e) for e in spec.get("attachments", [])] if attachments else [],
    )


def outgoing_from(
    due: DueMessage,
    parts: dict[str, bytes],
    recipients: list[str],
    *,
    attachments: bool = True,
) -> Outgoing:
    """Rebuild a queued message for ``recipients`` (its envelope), as it was planned."""
    spec = due.spec
    mail = email_from_spec(spec, parts, attachments=attachments)
    text = spec.get("text_alt") if mail.text is None else None
    if not attachments and spec.get("attachments"):
        names = ", ".join(e["filename"] for e in spec["attachments"])
        note = (
            f"<p style='color:#555'><i>The attachment(s) {names} were left out: the mail "
            "server refused the message as too large. They are in the run folder.</i></p>"
        )
        mail = replace(mail, html=(mail.html or "") + note if mail.html is not None else None)
        text = None  # the HTML changed: render its text again
    # the header recipients come from the spec; the envelope is the rows still to deliver
    if not (mail.to or mail.cc):
        mail = replace(mail, bcc=list(recipients))
    outgoing = write(
        mail,
        default_sender=spec.get("sender") or due.sender,
        message_id=spec.get("message_id") or due.message_id,
        date=spec.get("date") or formatdate(localtime=True),
        text=text,
    )
    return outgoing.with_envelope(due.sender, tuple(recipients))
