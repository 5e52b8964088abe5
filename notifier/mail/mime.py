"""A fast writer of notifier's MIME tree: the bytes :func:`~notifier.mail.model.compose` makes,
without the stdlib generator.

Why: a personalised bulk run (one email per customer, all sharing a chart) spent most of
its time in ``email.generator`` and the header registry (about 3 ms per 60 KB message,
more than sending it), and base64-encoded the same chart once per email. This module
writes the same tree::

    multipart/mixed
      multipart/alternative
        text/plain                      quoted-printable, or base64 when mostly non-ASCII
        multipart/related
          text/html                     the same
          image/png (Content-ID, inline)
      application/... (attachments)     base64

from the same validated data (:func:`~notifier.mail.model.check`), with

* base64 of each part done once and kept (by its bytes) in a bounded cache shared by
  every thread: a chart in 5,000 emails is encoded once, not 5,000 times;
* text parts encoded by ``binascii`` (C);
* headers written directly when they are plain ASCII that needs no folding or quoting;
  anything else (non-ASCII subjects and names, long lines, quoted display names) is
  folded by the stdlib's own header classes, so the rare hard case is exactly the
  stdlib's;
* anything unusual in a part (a MIME type with parameters, a non-ASCII or odd file name)
  makes the whole message go through :func:`~notifier.mail.model.compose` instead.

``tests/mail/test_mime.py`` checks on every message shape that the stdlib parser and a
second, independent parser (``fast-mail-parser``, Rust's ``mailparse``) read back the same
headers, tree, parameters and decoded contents from both writers.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from email.headerregistry import Address

from notifier.mail.model import (
    Checked,
    Email,
    Outgoing,
    check,
    check_size,
    compose,
    html_document,
    text_alternative,
    text_encoding,
)
from notifier.mail.parts import Part

_CRLF = b"\r\n"
_POLICY = email.policy.SMTP
_MAX_LINE = 78
_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+$")  # atext and spaces
_PLAIN_FILENAME = re.compile(r"^[\x20-\x7e]{1,60}$")


class _PartCache:
    """base64 of part bytes, line-wrapped for SMTP, kept up to ``budget`` bytes (LRU)."""

    def __init__(self, budget: int = 64 * 1024 * 1024) -> None:
        self.budget = budget
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def encoded(self, data: bytes) -> bytes:
        """``data`` as base64 lines of 76 characters, each ended by CRLF."""
        with self._lock:
            found = self._items.get(data)
            if found is not None:
                self._items.move_to_end(data)
                self.hits += 1
                return found
        encoded = base64.encodebytes(data).replace(b"\n", _CRLF)
        with self._lock:
            self.misses += 1
            if data not in self._items:
                self._items[data] = encoded
                self.size += len(data) + len(encoded)
            while self.size > self.budget and len(self._items) > 1:
                old, old_encoded = self._items.popitem(last=False)
                self.size -= len(old) + len(old_encoded)
        return encoded

    def clear(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._items.clear()
            self.size = self.hits = self.misses = 0


PART_CACHE = _PartCache()


def write(
    mail: Email,
    *,
    default_sender: str,
    message_id: str,
    date: str,
    text: str | None = None,
    max_size: int | None = None,
    checked: Checked | None = None,
) -> Outgoing:
    """Validate ``mail`` and write it as the bytes :func:`compose` would make.

    ``text``: its text/plain part when already known (the queue stores it at planning, so
    delivery does not render the HTML again); by default :func:`text_alternative`.
    Raises MessageError as :func:`compose` does.
    """
    checked = checked or check(mail, default_sender=default_sender)
    parts = [*mail.attachments, *(image.part for image in mail.images)]
    if not all(_plain_part(part) for part in parts):
        return compose(
            mail,
            default_sender=default_sender,
            max_size=max_size,
            message_id=message_id,
            date=date,
        )
    lines: list[bytes] = [_unstructured("Subject", checked.subject)]
    lines.append(_addresses("From", [checked.sender]))
    if checked.to:
        lines.append(_addresses("To", checked.to))
    if checked.cc:
        lines.append(_addresses("Cc", checked.cc))
    if checked.reply_to:
        lines.append(_addresses("Reply-To", checked.reply_to))
    lines.append(_unstructured("Date", date))
    lines.append(_unstructured("Message-ID", message_id))
    for name, value in mail.headers.items():
        lines.append(_cached_header(name, value))
    lines.append(b"MIME-Version: 1.0\r\n")
    head, body = _tree(mail, text if text is not None else text_alternative(mail))
    raw = b"".join([*lines, head, _CRLF, *body])
    out = Outgoing(
        None,
        checked.sender.addr_spec,
        checked.recipients,
        raw=raw,
        message_id=message_id,
        # as a parser reads the header back (the stdlib decodes a literal "=?...?=")
        subject=checked.subject
        if "=?" not in checked.subject
        else str(_POLICY.header_factory("Subject", checked.subject)),
    )
    check_size(out, max_size)
    return out


# ---------------------------------------------------------------------------- the tree


def _tree(mail: Email, text: str) -> tuple[bytes, list[bytes]]:
    """The top entity: its Content-* header lines and its body chunks."""
    entity = _text_entity("plain", text, text_encoding(text))
    if mail.html is not None:
        html = _text_entity("html", html_document(mail.html), text_encoding(mail.html))
        if mail.images:
            images = [
                _binary_entity(
                    image.part,
                    "inline",
                    extra=f"Content-ID: <{image.cid}>\r\n".encode("ascii"),
                )
                for image in mail.images
            ]
            html = _multipart("related", [html, *images])
        entity = _multipart("alternative", [entity, html])
    if mail.attachments:
        attachments = [_binary_entity(part, "attachment") for part in mail.attachments]
        entity = _multipart("mixed", [entity, *attachments])
    return entity


def _text_entity(subtype: str, text: str, cte: str) -> tuple[bytes, list[bytes]]:
    lines = text.encode("utf-8").splitlines()
    if cte == "quoted-printable":
        body = binascii.b2a_qp(b"\n".join(lines) + b"\n", istext=True).replace(b"\n", _CRLF)
    else:
        body = base64.encodebytes(_CRLF.join(lines) + _CRLF).replace(b"\n", _CRLF)
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n'
    ).encode("ascii")
    return head, [body]


def _binary_entity(part: Part, disposition: str, extra: bytes = b"") -> tuple[bytes, list[bytes]]:
    head = (
        f"Content-Type: {part.mime_type}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: {disposition}; filename="{part.filename}"\r\n'
    ).encode("ascii")
    return head + extra, [PART_CACHE.encoded(part.data)]


def _multipart(
    subtype: str, children: Sequence[tuple[bytes, list[bytes]]]
) -> tuple[bytes, list[bytes]]:
    # "=_" cannot occur in quoted-printable or base64 text: no body can contain the boundary
    boundary = f"=_{secrets.token_hex(12)}"
    delimiter = f"--{boundary}\r\n".encode("ascii")
    head = f'Content-Type: multipart/{subtype};\r\n boundary="{boundary}"\r\n'.encode("ascii")
    body: list[bytes] = []
    for index, (child_head, child_body) in enumerate(children):
        body += [_CRLF if index else b"", delimiter, child_head, _CRLF, *child_body]
    body.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return head, body


def _plain_part(part: Part) -> bool:
    """Can this part's headers be written directly (else: the stdlib writes the message)?"""
    return bool(
        _TOKEN.match(part.mime_type)
        and _PLAIN_FILENAME.match(part.filename)
        and '"' not in part.filename
        and "\\" not in part.filename
        and part.filename.strip() == part.filename
        and "  " not in part.filename
    )


# ------------------------------------------------------------------------------ headers

_HEADER_CACHE: OrderedDict[tuple, bytes] = OrderedDict()
_HEADER_CACHE_LOCK = threading.Lock()
_HEADER_CACHE_SIZE = 4096


def _remembered(key: tuple, make: callable) -> bytes:  # type: ignore[valid-type]
    with _HEADER_CACHE_LOCK:
        found = _HEADER_CACHE.get(key)
    if found is not None:
        return found
    value = make()
    with _HEADER_CACHE_LOCK:
        _HEADER_CACHE[key] = value
        if len(_HEADER_CACHE) > _HEADER_CACHE_SIZE:
            _HEADER_CACHE.popitem(last=False)
    return value


def _stdlib_fold(name: str, value: object) -> bytes:
    """The header as the stdlib's header registry folds it for SMTP."""
    header = _POLICY.header_factory(name, value)
    return header.fold(policy=_POLICY).encode("ascii")


def _unstructured(name: str, value: str) -> bytes:
    if (
        value.isascii()
        and value.isprintable()
        and len(name) + 2 + len(value) <= _MAX_LINE
        and value.strip() == value
        and "  " not in value
        and "=?" not in value
    ):
        return f"{name}: {value}\r\n".encode("ascii")
    return _stdlib_fold(name, value)


def _cached_header(name: str, value: str) -> bytes:
    return _remembered(("h", name, value), lambda: _unstructured_or_stdlib(name, value))


def _unstructured_or_stdlib(name: str, value: str) -> bytes:
    # a custom header may be an address header (To: undisclosed-recipients:;): the stdlib
    # picks the right class for the name
    return _stdlib_fold(name, value)


def _address(addr: Address) -> str | None:
    """``addr`` written plainly, or None when it needs quoting or encoding."""
    name = addr.display_name
    spec = addr.addr_spec
    if not spec.isascii():
        return None
    if not name:
        return spec
    if _PLAIN_NAME.match(name) and name.strip() == name and "  " not in name:
        return f"{name} <{spec}>"
    return None


def _addresses(name: str, addresses: list[Address]) -> bytes:
    written = [_address(a) for a in addresses]
    if any(w is None for w in written):
        key = ("a", name, tuple((a.display_name, a.username, a.domain) for a in addresses))
        return _remembered(key, lambda: _stdlib_fold(name, addresses))
    items: list[str] = written  # type: ignore[assignment]
    line = f"{name}: {', '.join(items)}"
    if len(line) <= _MAX_LINE:
        return (line + "\r\n").encode("ascii")
    if any(len(name) + 3 + len(item) > _MAX_LINE for item in items):
        return _stdlib_fold(name, addresses)
    folded = f"{name}: " + ",\r\n ".join(items)
    return (folded + "\r\n").encode("ascii")
