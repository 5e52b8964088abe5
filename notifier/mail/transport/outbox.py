"""Outbox transport: the embedded default when no SMTP server is configured.

Each message becomes ``<stamp>-<subject>-<id>.eml`` (open it in any mail client) and a
``.html`` preview beside it in which inline images are data URIs, so a browser
shows what the recipient would see. ``index.html`` lists them, newest first.

Safe to use from several threads at once: every file is written through its own
uniquely named temporary file, and ``index.html`` is regenerated under a lock.
"""

from __future__ import annotations

import html
import logging
import os
import re
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from notifier.mail.preview import render_preview
from notifier.mail.transport.base import Outgoing, ResultCallback, SendResult, SimpleSession

log = logging.getLogger("notifier.outbox")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_INDEX_LOCK = threading.Lock()  # one index.html writer at a time in this process


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
        """Write each message as ``.eml`` plus ``.html`` preview; one result each, in order.

        A folder that cannot be created or written is a failed result (naming the folder,
        the OS error and the fix), not an exception. ``on_result(index, result)`` runs as
        soon as each message is written (or has failed).
        """
        results: list[SendResult] = []
        for out in messages:
            results.append(self._save_or_fail(out))
            if on_result is not None:
                on_result(len(results) - 1, results[-1])
        if any(r.location for r in results):
            self._update_index()
        return results

    def session(self) -> SimpleSession:
        """Messages one at a time; ``index.html`` is updated when the session ends."""
        outbox = self
        wrote: list[bool] = []

        class _OutboxSession(SimpleSession):
            def close(self) -> None:
                if wrote:
                    outbox._update_index()

        def save(out: Outgoing) -> SendResult:
            result = self._save_or_fail(out)
            if result.location:
                wrote.append(True)
            return result

        return _OutboxSession(save)

    def _save_or_fail(self, out: Outgoing) -> SendResult:
        try:
            return self._save(out)
        except OSError as exc:
            # an unwritable folder can be fixed: the queue tries again later
            return SendResult(
                out.message_id, out.subject, self.name, error=self._unwritable(exc), retryable=True
            )

    def _update_index(self) -> None:
        try:
            self.write_index()
        except OSError as exc:  # the messages themselves are saved
            log.warning("could not update %s: %s", self.directory / "index.html", exc)

    def _save(self, out: Outgoing) -> SendResult:
        """Write one message and its preview (neither is left behind if either fails)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        stem = f"{stamp}-{_slug(out.subject)}-{uuid.uuid4().hex[:12]}"
        eml = self.directory / f"{stem}.eml"
        preview = self.directory / f"{stem}.html"
        bcc = [r for r in out.recipients if r not in _header_addresses(out)]
        try:
            _write_atomic(eml, out.data)
            _write_atomic(preview, render_preview(out.message, bcc).encode("utf-8"))
        except OSError:
            for path in (eml, preview):
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
            raise
        return SendResult.all_accepted(
            out, self.name, None, "written to outbox", location=str(preview.resolve())
        )

    def _unwritable(self, exc: OSError) -> str:
        folder = self.directory.absolute()
        reason = exc.strerror or str(exc)
        if folder.exists() and not folder.is_dir():
            reason += "; it is a file, not a folder"
        return (
            f"Cannot save the message in the outbox folder {folder} ({reason}); it was not "
            "written. Fix: set NOTIFIER_OUTBOX to a writable folder."
        )

    def write_index(self) -> Path:
        """Regenerate ``index.html``: every preview in the outbox, newest first.

        Serialised by a process-wide lock, so the last writer lists every message written
        before it and concurrent senders never replace each other's temporary file.
        """
        with _INDEX_LOCK:
            pages = [p for p in self.directory.glob("*.html") if p.name != "index.html"]
            pages.sort(reverse=True)  # names start with a timestamp
            rows = [_index_row(page) for page in pages[:INDEX_LIMIT]]
            more = f" (newest {INDEX_LIMIT} shown)" if len(pages) > INDEX_LIMIT else ""
            index = self.directory / "index.html"
            _write_atomic(
                index,
                (
                    '<!DOCTYPE html><html><head><meta charset="utf-8"><title>notifier outbox</title>'
                    '</head><body style="font-family:sans-serif"><h1>notifier outbox</h1>'
                    f"<p>{len(pages)} message(s), newest first{more}.</p>"
                    '<table style="border-collapse:collapse" cellpadding="4">'
                    "<tr><th align=left>Date</th><th align=left>Subject</th>"
                    "<th align=left>To</th><th></th></tr>"
                    f"{''.join(rows)}</table></body></html>"
                ).encode(),
            )
            return index


INDEX_LIMIT = 500


def _index_row(page: Path) -> str:
    """One row of the index: date, subject and recipients read from the .eml headers."""
    from email.parser import BytesHeaderParser
    from email.policy import default

    eml = page.with_suffix(".eml")
    date = subject = to = ""
    try:
        with open(eml, "rb") as handle:
            # the head is enough: a message may carry megabytes of attachments
            headers = BytesHeaderParser(policy=default).parsebytes(handle.read(65536))
        date, subject, to = (str(headers.get(h, "")) for h in ("Date", "Subject", "To"))
    except OSError:
        subject = page.stem
    link = f'<a href="{html.escape(page.name)}">{html.escape(subject or page.stem)}</a>'
    raw = f' <a href="{html.escape(eml.name)}">.eml</a>' if eml.exists() else ""
    return (
        f"<tr><td>{html.escape(date)}</td><td>{link}</td><td>{html.escape(to)}</td>"
        f"<td>{raw}</td></tr>"
    )


def _header_addresses(out: Outgoing) -> set[str]:
    from email.utils import getaddresses

    fields = [str(out.message.get(h, "")) for h in ("To", "Cc")]
    return {addr for _, addr in getaddresses(fields) if addr}


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file of its own in the same folder.

    The temporary name is unique (so concurrent writers never share one) and the file is
    created like ``open(..., "wb")`` would (mode 0666 minus the umask; ``mkstemp`` would
    make it 0600). ``os.replace`` then swaps it in atomically.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
