"""What a notebook does interactively: preview an email and send a test copy."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from notifier.errors import DeliveryError
from notifier.mail.model import Email, compose
from notifier.mail.preview import render_preview
from notifier.mail.transport import SendResult, transport_for
from notifier.project import project_settings

PLACEHOLDER_RECIPIENT = "recipients@job.invalid"


def default_recipients() -> dict[str, list[str]] | None:
    """The run's recipients for emails that name none (``NOTIFIER_DEFAULT_RECIPIENTS``).

    The runner sets the variable for the kernel as JSON ``{"to": [], "cc": [], "bcc": []}``;
    None when it is unset, empty or not in that shape (the preview then says the job decides).
    """
    from notifier.notebook.bundle import DEFAULT_RECIPIENTS_ENV

    raw = os.environ.get(DEFAULT_RECIPIENTS_ENV, "").strip()
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    found: dict[str, list[str]] = {}
    for field in ("to", "cc", "bcc"):
        value = data.get(field) or []
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            return None
        found[field] = [a for a in value if a.strip()]
    return found if any(found.values()) else None


def preview(mail: Email, *, budget: int | None = None) -> str:
    """HTML preview of ``mail`` as it would be sent.

    An email that names no recipients shows the run's (``NOTIFIER_DEFAULT_RECIPIENTS``),
    else a placeholder saying the job's recipients are used.
    """
    overrides = {}
    if not (mail.to or mail.cc or mail.bcc):
        defaults = default_recipients()
        if defaults is not None:
            mail = replace(mail, **defaults)
        else:
            mail = replace(mail, to=[PLACEHOLDER_RECIPIENT])
            overrides["To"] = "(the job's recipients, from jobs.yaml or --to)"
    sender = _preview_sender()
    outgoing = compose(mail, default_sender=sender)
    return render_preview(
        outgoing.message, mail.bcc, standalone=False, overrides=overrides, image_budget=budget
    )


def _preview_sender() -> str:
    """The From address to show: from the runner in scheduled runs (the kernel never
    reads .env there), else from the project's settings."""
    import os

    from notifier.notebook.bundle import FROM_ENV, in_scheduled_run

    if in_scheduled_run():
        return os.environ.get(FROM_ENV) or "notifier@localhost"
    try:
        return project_settings().from_address
    except Exception:  # a broken .env must not break the preview
        return "notifier@localhost"


class SendTestError(DeliveryError):
    """A test copy was not delivered: the refused addresses or the failure, and the fix.

    In a notebook it shows as these two lines, not as a traceback through notifier.
    """

    def __init__(self, message: str, fix: str | None, results: list[SendResult]) -> None:
        super().__init__(message, fix)
        self.results = results

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback."""
        return [
            f"{type(self).__name__}: {self.message}",
            *([f"  fix: {self.fix}"] if self.fix else []),
        ]


class SentCopies(list[SendResult]):
    """The results of :func:`send_test_copy`, shown as one line per recipient.

    A list of :class:`~notifier.mail.transport.SendResult` (``results[0].ok`` still works).
    In a notebook the lines are printed once, when the copy is sent; as the cell's last
    line the result adds nothing more in that cell.
    """

    def __init__(self, results: Iterable[SendResult], note: str | None = None) -> None:
        super().__init__(results)
        self.note = note
        self._shown_in: int | None = None

    @property
    def ok(self) -> bool:
        """True when every recipient of every copy was accepted."""
        return all(result.ok for result in self)

    def lines(self) -> list[str]:
        """One line per recipient (and the outbox hint)."""
        lines = []
        for result in self:
            for recipient in result.recipients:
                state = "accepted" if recipient.accepted else "REFUSED"
                reply = " ".join(str(x) for x in (recipient.code, recipient.reply) if x)
                detail = result.location or reply
                lines.append(
                    f"{state}: {recipient.address} via {result.transport}"
                    + (f" ({detail})" if detail else "")
                )
            if result.error and not result.recipients:
                lines.append(f"FAILED: {result.error}")
        if self.note:
            lines.append(self.note)
        return lines

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def show(self) -> None:
        """Print the lines, and remember the notebook cell that showed them."""
        print(repr(self))
        self._shown_in = _execution_count()

    def _ipython_display_(self) -> None:
        """As a cell's result: print the lines unless this cell printed them already."""
        if self._shown_in is None or self._shown_in != _execution_count():
            self.show()


def _execution_count() -> int | None:
    """The number of the notebook cell running now (None outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "execution_count", None) if shell is not None else None


@contextmanager
def _transport_logs_silenced() -> Iterator[None]:
    """The transport logs each refusal; without logging set up Python would print it
    to stderr, repeating what the result (or the exception) already says."""
    logger = logging.getLogger("notifier")
    quiet = logging.NullHandler()
    logger.addHandler(quiet)
    try:
        yield
    finally:
        logger.removeHandler(quiet)


def _not_delivered(results: list[SendResult]) -> SendTestError:
    """One exception naming every refused address or failure, with the fix."""
    problems: list[str] = []
    fixes: list[str] = []
    for result in results:
        cause, _, fix = (result.error or "").partition(" Fix: ")
        for refused in result.refused:
            reply = " ".join(str(x) for x in (refused.code, refused.reply) if x)
            problems.append(f"{refused.address} was refused" + (f" ({reply})" if reply else ""))
        if cause and not result.refused:
            problems.append(cause.rstrip("."))
        if fix:
            fixes.append(fix.rstrip("."))
    accepted = [address for result in results for address in result.accepted]
    message = "The test email was not delivered: " + "; ".join(problems) + "."
    if accepted:
        message += f" It was accepted for {', '.join(accepted)}."
    if not fixes and any(result.refused for result in results):
        fixes.append("check the recipient address")
    fix = "; ".join(dict.fromkeys(fixes)) or (
        "`notifier doctor --send-test ADDRESS` checks the mail settings step by step"
    )
    return SendTestError(message, fix, results)


def send_test_copy(mail: Email, addresses: list[str]) -> SentCopies:
    """Send ``mail`` to ``addresses`` only (no cc/bcc), subject prefixed with [TEST].

    Prints one line per recipient; raises :class:`SendTestError` when any address was
    refused or the message could not be sent.
    """
    settings = project_settings()
    test_mail = replace(mail, to=addresses, cc=[], bcc=[], subject=f"[TEST] {mail.subject}")
    outgoing = compose(
        test_mail, default_sender=settings.from_address, max_size=settings.max_message_size
    )
    with _transport_logs_silenced():
        results = transport_for(settings).send([outgoing])
    note = None
    if settings.uses_outbox:
        note = f"(no SMTP_HOST set: open {settings.outbox_dir / 'index.html'} in a browser)"
    sent = SentCopies(results, note)
    if not sent.ok:
        raise _not_delivered(list(results))
    sent.show()
    return sent
