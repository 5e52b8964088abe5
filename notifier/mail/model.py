"""The email model: plain data in, a correct stdlib ``EmailMessage`` out.

Structure of a composed message (parts that are not needed are left out)::

    multipart/mixed
      multipart/alternative
        text/plain
        multipart/related
          text/html
          image/png (Content-ID, inline)
      application/... (attachments)

Everything a user can get wrong (addresses, header injection, size) is checked
in :func:`compose`, before any connection is opened.

:func:`compose` builds the message with the stdlib (``EmailMessage``): the reference, used
for single messages (``notifier send``, previews, ``send_test``). Bulk delivery writes the
same tree with :mod:`notifier.mail.mime`, which shares :func:`check` and
:func:`text_alternative` with it and is tested to read back identically.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from functools import cached_property

from notifier.errors import MessageError
from notifier.mail.htmltext import html_to_text
from notifier.mail.parts import Part

_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_DOMAIN_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass
class InlineImage:
    """An image the HTML body shows with ``<img src="cid:{cid}">``."""

    cid: str
    part: Part


@dataclass
class Email:
    """One email as data. ``compose`` turns it into an :class:`Outgoing` message."""

    subject: str = ""
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    sender: str | None = None
    reply_to: list[str] = field(default_factory=list)
    text: str | None = None
    html: str | None = None
    images: list[InlineImage] = field(default_factory=list)
    attachments: list[Part] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    # A stable identity within a run (report.email(..., key="region-north")); without it
    # the delivery queue keys the email by its content.
    key: str | None = None

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient (to + cc + bcc), duplicates removed, order kept."""
        seen: dict[str, None] = {}
        for addr in [*self.to, *self.cc, *self.bcc]:
            seen.setdefault(addr, None)
        return list(seen)


class Outgoing:
    """A composed message plus its SMTP envelope (Bcc lives only here, never in headers).

    Made from a stdlib ``EmailMessage`` (:func:`compose`), or from the bytes
    :mod:`notifier.mail.mime` wrote (``raw``, with its Message-ID and Subject); ``message``
    then parses them back when someone asks for it.
    """

    def __init__(
        self,
        message: EmailMessage | None = None,
        sender: str = "",
        recipients: tuple[str, ...] = (),
        *,
        raw: bytes | None = None,
        message_id: str = "",
        subject: str = "",
    ) -> None:
        if message is None and raw is None:
            raise ValueError("Outgoing needs a message or its raw bytes")
        self._message = message
        self.sender = sender
        self.recipients = tuple(recipients)
        self._raw = raw
        self._message_id = message_id
        self._subject = subject

    def __repr__(self) -> str:
        return f"Outgoing({self.subject!r}, {self.message_id}, to {list(self.recipients)})"

    def with_envelope(self, sender: str, recipients: tuple[str, ...]) -> Outgoing:
        """The same message with another SMTP envelope."""
        copy = Outgoing(
            self._message,
            sender,
            recipients,
            raw=self._raw,
            message_id=self._message_id,
            subject=self._subject,
        )
        if "data" in self.__dict__:
            copy.__dict__["data"] = self.__dict__["data"]
        return copy

    @cached_property
    def message(self) -> EmailMessage:
        """The message as a stdlib ``EmailMessage`` (parsed back from raw bytes if need be)."""
        if self._message is not None:
            return self._message
        from email import message_from_bytes

        assert self._raw is not None
        parsed = message_from_bytes(self._raw, policy=email.policy.SMTP)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @cached_property
    def data(self) -> bytes:
        """The message as sent on the wire: CRLF line endings, lines folded for SMTP."""
        if self._raw is not None:
            return self._raw
        assert self._message is not None
        return self._message.as_bytes(policy=email.policy.SMTP)

    @property
    def size(self) -> int:
        """Encoded size in bytes."""
        return len(self.data)

    @property
    def message_id(self) -> str:
        """The Message-ID header."""
        if self._message is None:
            return self._message_id
        return str(self._message.get("Message-ID", ""))

    @property
    def subject(self) -> str:
        """The Subject header."""
        if self._message is None:
            return self._subject
        return str(self._message.get("Subject", ""))


def check_header_value(name: str, value: str) -> str:
    """Refuse CR/LF (header injection) in any header value."""
    if "\r" in value or "\n" in value:
        raise MessageError(
            f"The {name} contains a line break, which would inject mail headers: {value[:60]!r}",
            f"remove the line breaks from the {name}",
        )
    return value


def _ascii_domain(domain: str, original: str) -> str:
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        raise MessageError(
            f"{original!r} has a domain that is not a valid internationalized name.",
            "check the spelling of the part after @",
        ) from None
    labels = ascii_domain.rstrip(".").split(".")
    if len(labels) < 1 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise MessageError(f"{original!r} is not a valid email address.", "check the domain")
    return ascii_domain


def parse_address(raw: str, *, role: str = "address") -> Address:
    """One address, ``a@b.c`` or ``Name <a@b.c>``; IDNA domains converted to ASCII."""
    check_header_value(role, raw)
    parsed = getaddresses([raw])
    if len(parsed) != 1 or not parsed[0][1] or parsed[0][1].count("@") != 1:
        raise MessageError(
            f"{raw!r} is not a valid email address ({role}).",
            "write it as name@example.com or 'Name <name@example.com>', one per entry",
        )
    name, addr = parsed[0]
    local, domain = addr.rsplit("@", 1)
    if not local or not domain or not _LOCAL_PART.match(local) or ".." in local:
        hint = (
            "non-ASCII mailbox names need SMTPUTF8, which notifier does not send yet"
            if not local.isascii()
            else "check the part before @"
        )
        raise MessageError(f"{raw!r} is not a valid email address ({role}).", hint)
    return Address(display_name=name, username=local, domain=_ascii_domain(domain, raw))


def parse_addresses(values: Iterable[str] | str | None, *, role: str) -> list[Address]:
    """A list of addresses; a single string may hold several separated by commas."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    result = []
    for value in values:
        check_header_value(role, value)
        # Each entry is parsed on its own: getaddresses() silently drops what it cannot
        # parse ("bob@") and splits quoted names that hold a comma ("Doe, Jane").
        result += [parse_address(entry, role=role) for entry in _split_address_list(value)]
    return result


def _split_address_list(value: str) -> list[str]:
    """Split at commas/semicolons outside quotes and <...>; empty entries are dropped."""
    entries, current, quoted, escaped, angle = [], "", False, False, 0
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char in "<>":
            angle = max(0, angle + (1 if char == "<" else -1))
        elif not quoted and not angle and char in ",;":
            entries.append(current)
            current = ""
            continue
        current += char
    entries.append(current)
    return [entry.strip() for entry in entries if entry.strip()]


@dataclass(frozen=True)
class Checked:
    """What :func:`check` found valid: parsed addresses and the envelope recipients."""

    subject: str
    sender: Address
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]
    reply_to: list[Address]
    recipients: tuple[str, ...]


def check(mail: Email, *, default_sender: str) -> Checked:
    """Validate what a user can get wrong in ``mail`` (MessageError names it and the fix)."""
    subject = check_header_value("subject", mail.subject or "")
    sender = parse_address(mail.sender or default_sender, role="sender")
    to = parse_addresses(mail.to, role="to")
    cc = parse_addresses(mail.cc, role="cc")
    bcc = parse_addresses(mail.bcc, role="bcc")
    reply_to = parse_addresses(mail.reply_to, role="reply-to")
    if not (to or cc or bcc):
        raise MessageError(
            f"The email {subject!r} has no recipients.",
            "give at least one address in to, cc or bcc (or --to on the command line)",
        )
    for name, value in mail.headers.items():
        check_header_value(f"header {name}", name)
        check_header_value(f"header {name}", value)
    for part in [*mail.attachments, *(image.part for image in mail.images)]:
        check_header_value("file name", part.filename)
    if mail.html is None and mail.images:
        raise MessageError("Inline images need an HTML body that shows them.", "add an html body")
    seen: dict[str, None] = {}
    for addr in [*to, *cc, *bcc]:
        seen.setdefault(addr.addr_spec, None)
    return Checked(subject, sender, to, cc, bcc, reply_to, tuple(seen))


def text_alternative(mail: Email) -> str:
    """The text/plain part: ``mail.text``, else a rendering of its HTML body, else empty."""
    if mail.text is not None:
        return mail.text
    return html_to_text(mail.html) if mail.html is not None else ""


def check_size(out: Outgoing, max_size: int | None) -> None:
    """MessageError when ``out`` is larger than ``max_size`` bytes encoded."""
    if max_size is not None and out.size > max_size:
        raise MessageError(
            f"The email {out.subject!r} is {out.size / 1e6:.1f} MB encoded, over the "
            f"{max_size / 1e6:.1f} MB limit.",
            "attach fewer or smaller files (or link to them), or raise NOTIFIER_MAX_MESSAGE_SIZE "
            "if your server accepts larger messages",
        )


def compose(
    mail: Email,
    *,
    default_sender: str,
    max_size: int | None = None,
    message_id_domain: str | None = None,
    message_id: str | None = None,
    date: str | None = None,
) -> Outgoing:
    """Validate ``mail`` and build the MIME message with its envelope (stdlib).

    ``message_id`` and ``date`` fix those headers (the delivery queue rebuilds a stored
    email exactly as planned); by default they are new. Raises MessageError for a missing
    recipient, a bad address, a line break in a header, or a message larger than
    ``max_size`` bytes.
    """
    checked = check(mail, default_sender=default_sender)
    subject, sender, to, cc = checked.subject, checked.sender, checked.to, checked.cc
    reply_to = checked.reply_to

    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = subject
    msg["From"] = sender
    if to:
        msg["To"] = to
    if cc:
        msg["Cc"] = cc
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Date"] = date or formatdate(localtime=True)
    msg["Message-ID"] = message_id or make_msgid(domain=message_id_domain or sender.domain)
    for name, value in mail.headers.items():
        msg[name] = value
    _set_body(msg, mail)
    for part in mail.attachments:
        msg.add_attachment(
            part.data, maintype=part.maintype, subtype=part.subtype, filename=part.filename
        )

    out = Outgoing(message=msg, sender=sender.addr_spec, recipients=checked.recipients)
    check_size(out, max_size)
    return out


def _set_body(msg: EmailMessage, mail: Email) -> None:
    text = text_alternative(mail)
    msg.set_content(text, cte=text_encoding(text))
    if mail.html is None:
        return
    msg.add_alternative(html_document(mail.html), subtype="html", cte=text_encoding(mail.html))
    if mail.images:
        html_part = msg.get_payload()[1]
        for image in mail.images:
            html_part.add_related(
                image.part.data,
                maintype=image.part.maintype,
                subtype=image.part.subtype,
                cid=f"<{image.cid}>",
                filename=image.part.filename,
                disposition="inline",
            )


def text_encoding(text: str) -> str:
    """quoted-printable keeps mostly-ASCII text readable in raw form; base64 for the rest."""
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))  # counted in C
    return "quoted-printable" if non_ascii < len(text) / 4 else "base64"


def html_document(body: str) -> str:
    """The HTML part: ``body`` as is when it is a whole document, else wrapped in one."""
    if re.search(r"<html[\s>]", body, re.I):
        return body
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
        f'<body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#222">'
        f"{body}</body></html>"
    )


def referenced_cids(markup: str) -> set[str]:
    """The Content-IDs an HTML body refers to with ``cid:``."""
    return set(re.findall(r"cid:([^\"'\s)>]+)", markup))


def new_cid(domain: str = "notifier.local") -> str:
    """A fresh Content-ID without angle brackets."""
    return make_msgid(domain=domain)[1:-1]
