"""The API notebook code calls to declare the emails a run sends.

In JupyterLab an email shows a faithful preview (headers, HTML body with its
charts, attachments with sizes) and ``send_test`` mails a copy now. Under
``notifier run`` the same calls leave a display bundle of MIME type
:data:`EMAIL_MIME` in the executed notebook, and record it in the run's parts
folder too (``NOTIFIER_PARTS_DIR``); the runner reads both, so an email whose output
was captured (``%%capture``) or cleared (``clear_output()``) is still sent, once.
Binary parts are written to the parts folder, never inlined.

Example::

    from notifier import report
    email = report.email(subject=f"Sales {run_date}")
    email.markdown("**Revenue** is up 4 %")
    email.table(df.head(10), caption="Top products")
    email.chart(fig)
    email.attach(df, "sales.csv")
    report.skip("no new rows since yesterday")   # nothing is sent; the run is 'skipped'
"""

from __future__ import annotations

import html as html_lib
import itertools
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from notifier.mail.model import Email, InlineImage, new_cid
from notifier.mail.parts import Part, attachment_part, image_part
from notifier.mail.tables import FloatFormat, dataframe_html
from notifier.notebook.bundle import (
    EMAIL_MIME,
    FORMAT_VERSION,
    PARTS_DIR_ENV,
    SKIP_MIME,
    in_scheduled_run,
    part_entry,
    record_email,
    record_skip,
)

# Preview images beyond this many bytes in one email show as placeholders, to keep notebooks small.
PREVIEW_IMAGE_BUDGET = 4 * 1024 * 1024
_created = itertools.count()  # orders the emails as the notebook creates them

__all__ = ["EMAIL_MIME", "SKIP_MIME", "ReportEmail", "Skipped", "email", "skip", "in_scheduled_run"]


class Skipped(BaseException):  # noqa: N818 - reads as report.Skipped in notebooks
    """Raised by :func:`skip` to stop the notebook; the run is recorded as skipped.

    A ``BaseException``, like ``KeyboardInterrupt`` and ``SystemExit``: a notebook's own
    ``try: ... except Exception:`` does not catch it, so the notebook stops where it
    skipped. The run is skipped once :func:`skip` was called, even if the notebook catches
    this (``except BaseException:``) and goes on: nothing is sent.
    """


def _as_list(value: Iterable[str] | str | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class ReportEmail:
    """An email being built in a notebook. Create it with :func:`email`."""

    def __init__(
        self,
        subject: str = "",
        *,
        to: Iterable[str] | str | None = None,
        cc: Iterable[str] | str | None = None,
        bcc: Iterable[str] | str | None = None,
        reply_to: Iterable[str] | str | None = None,
        sender: str | None = None,
        key: str | None = None,
    ) -> None:
        if key is not None and not isinstance(key, str):
            raise TypeError(
                f"key= must be text, not {type(key).__name__}: e.g. key=f'customer-{{id}}'"
            )
        self.email_id = uuid.uuid4().hex
        self._sequence = next(_created)
        self.key = key
        self.subject = subject
        self.to = _as_list(to)
        self.cc = _as_list(cc)
        self.bcc = _as_list(bcc)
        self.reply_to = _as_list(reply_to)
        self.sender = sender
        self._blocks: list[str] = []
        self._images: list[InlineImage] = []
        self._attachments: list[Part] = []
        self._revision = 0
        self._display: Any = None
        self._shown_in: int | None = None  # the cell (execution count) that last showed it

    # -- content ---------------------------------------------------------------------------
    def markdown(self, text: str) -> None:
        """Append Markdown (rendered to HTML: bold, lists, links, tables)."""
        import mistune

        self.html(mistune.html(text))

    def text(self, text: str) -> None:
        """Append plain text as a paragraph (escaped; line breaks kept)."""
        escaped = html_lib.escape(text).replace("\n", "<br>")
        self.html(f"<p>{escaped}</p>")

    def heading(self, text: str, level: int = 2) -> None:
        """Append a heading (level 1-4)."""
        level = min(max(level, 1), 4)
        self.html(f"<h{level}>{html_lib.escape(text)}</h{level}>")

    def html(self, markup: str) -> None:
        """Append raw HTML. Use inline styles: mail clients drop ``<style>`` blocks."""
        self._blocks.append(markup)
        self._changed()

    def table(
        self,
        frame: Any,
        caption: str | None = None,
        *,
        max_rows: int = 200,
        index: bool | None = None,
        float_format: FloatFormat = None,
    ) -> None:
        """Append a pandas DataFrame (or Series) as an inline-styled HTML table.

        Numbers get their column's natural format: integers (and integer-valued floats)
        without decimals, other floats with as few decimals as they need (at most 2).
        ``float_format=",.2f"`` sets every float column; a mapping sets named columns,
        e.g. ``float_format={"revenue": ",.0f", "share": ".1%"}``.
        """
        markup = dataframe_html(
            frame, caption, max_rows=max_rows, index=index, float_format=float_format
        )
        self.html(markup)

    def chart(
        self,
        figure: Any,
        *,
        attach: bool = False,
        filename: str | None = None,
        alt: str | None = None,
        width: int | None = None,
    ) -> None:
        """Append a matplotlib figure (or image bytes / file) as an inline image.

        ``attach=True`` also attaches it as a file (``filename``, default chart-N.png).
        """
        name = filename or f"chart-{len(self._images) + 1}.png"
        part = image_part(figure, name)
        cid = new_cid()
        self._images.append(InlineImage(cid, part))
        size = f"width:{width}px;" if width else ""
        description = html_lib.escape(alt or Path(part.filename).stem, quote=True)
        self._blocks.append(
            f'<p><img src="cid:{cid}" alt="{description}" style="{size}max-width:100%;height:auto"></p>'
        )
        if attach:
            self._attachments.append(part)
        self._changed()

    image = chart

    def attach(
        self, source: Any, filename: str | None = None, *, mime_type: str | None = None
    ) -> None:
        """Attach a file path, bytes (with ``filename``), a figure, or a DataFrame.

        A DataFrame is written as CSV, XLSX or JSON according to ``filename``.
        """
        self._attachments.append(attachment_part(source, filename, mime_type))
        self._changed()

    # -- what is sent ----------------------------------------------------------------------
    @property
    def body_html(self) -> str:
        """The HTML body built so far."""
        return "\n".join(self._blocks)

    def to_email(self) -> Email:
        """The plain :class:`~notifier.mail.model.Email` this report describes."""
        return Email(
            subject=self.subject,
            to=list(self.to),
            cc=list(self.cc),
            bcc=list(self.bcc),
            reply_to=list(self.reply_to),
            sender=self.sender,
            html=self.body_html if self._blocks else None,
            text=None if self._blocks else "",
            images=list(self._images),
            attachments=list(self._attachments),
            key=self.key,
        )

    def send_test(self, address: str | Iterable[str]) -> list[Any]:
        """Send this email now to ``address`` only, with the ``.env`` settings.

        Without SMTP settings it goes to the outbox. Prints one line per recipient and
        returns the results; raises :class:`~notifier.notebook.interactive.SendTestError` (cause
        and fix) when an address is refused or the server cannot be reached. During
        scheduled runs this does nothing: the runner sends the real email.
        """
        if in_scheduled_run():
            print("send_test() does nothing during scheduled runs; the runner sends the email.")
            return []
        from notifier.notebook.interactive import send_test_copy

        return send_test_copy(self.to_email(), _as_list(address))

    def preview_html(self) -> str:
        """The HTML preview shown in Jupyter (headers, body, attachments)."""
        from notifier.notebook.interactive import preview

        return preview(self.to_email(), budget=PREVIEW_IMAGE_BUDGET)

    # -- the bundle the runner reads -------------------------------------------------------
    def to_bundle(self) -> dict[str, Any]:
        """JSON-able description of the email; binary parts go to NOTIFIER_PARTS_DIR."""
        parts_dir = os.environ.get(PARTS_DIR_ENV)
        return {
            "version": FORMAT_VERSION,
            "email_id": self.email_id,
            "key": self.key,
            "revision": self._revision,
            "subject": self.subject,
            "to": self.to,
            "cc": self.cc,
            "bcc": self.bcc,
            "reply_to": self.reply_to,
            "sender": self.sender,
            "html": self.body_html if self._blocks else None,
            "images": [dict(part_entry(i.part, parts_dir), cid=i.cid) for i in self._images],
            "attachments": [part_entry(p, parts_dir) for p in self._attachments],
        }

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        try:
            preview_markup = self.preview_html()
        except Exception as error:  # an invalid address must not hide the content
            preview_markup = (
                f'<div style="color:#b00">This email cannot be sent as it is: '
                f"{html_lib.escape(str(error))}</div>"
            )
        return {
            "text/plain": self._summary(),
            "text/html": preview_markup,
            EMAIL_MIME: self.to_bundle(),
        }

    def _ipython_display_(self) -> None:
        """As a cell's result: nothing more when this cell already shows the email.

        The email shows itself (and updates in place) from the cell that creates it, so
        ``email`` as the last line of that cell would show it twice. In a later cell it
        shows again, as one more view of the same display that later changes update too.
        """
        shell = _shell()
        if shell is None:
            return
        if self._display is not None and self._shown_in == shell.execution_count:
            return
        _publish(self, new_view=True)

    def __repr__(self) -> str:
        return self._summary()

    def _summary(self) -> str:
        recipients = ", ".join(self.to + self.cc)
        if not (recipients or self.bcc):
            from notifier.notebook.interactive import default_recipients

            defaults = default_recipients()
            shown = [*defaults["to"], *defaults["cc"]] if defaults else []
            recipients = ", ".join(shown) or "(the job's recipients)"
        return (
            f"<ReportEmail {self.subject!r} to {recipients}: {len(self._blocks)} blocks, "
            f"{len(self._images)} images, {len(self._attachments)} attachments>"
        )

    def _changed(self) -> None:
        """Bump the revision, refresh this email's output in the notebook and record it.

        The record (in the run's parts folder) is what the runner reads when the output
        never reaches the output notebook (``%%capture``, ``clear_output()``).
        """
        self._revision += 1
        shown = _publish(self)
        parts_dir = os.environ.get(PARTS_DIR_ENV)
        if parts_dir:
            record_email(
                shown[EMAIL_MIME] if shown else self.to_bundle(), self._sequence, parts_dir
            )

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in {"subject", "to", "cc", "bcc", "reply_to", "sender"} and "_revision" in vars(
            self
        ):
            self._changed()


def _shell() -> Any:
    """The running IPython shell, or None (plain Python)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _publish(mail: ReportEmail, *, new_view: bool = False) -> dict[str, Any] | None:
    """Show the email (first change) or update its output in place (later changes).

    The bundle is published raw: ``display(mail)`` would go through ``_ipython_display_``.
    Returns the bundle published (None outside IPython).
    """
    shell = _shell()
    if shell is None:
        return None
    from IPython.display import display

    bundle = mail._repr_mimebundle_()
    if mail._display is None:
        object.__setattr__(mail, "_display", display(bundle, raw=True, display_id=True))
    elif new_view:
        display(bundle, raw=True, display_id=mail._display.display_id)
    else:
        mail._display.update(bundle, raw=True)
    object.__setattr__(mail, "_shown_in", shell.execution_count)
    return bundle


def email(
    subject: str = "",
    *,
    to: Iterable[str] | str | None = None,
    cc: Iterable[str] | str | None = None,
    bcc: Iterable[str] | str | None = None,
    reply_to: Iterable[str] | str | None = None,
    sender: str | None = None,
    key: str | None = None,
) -> ReportEmail:
    """Start an email. Without ``to``/``cc``/``bcc`` it goes to the job's recipients.

    A notebook may create several (for example one per regional manager). ``key`` names
    the email within a run (e.g. ``key="region-north"``): a re-run of the same slot then
    recognises it even if its content changed, and never sends it to a recipient twice.
    Without a key, an email is recognised by its subject, recipients and content.
    """
    mail = ReportEmail(subject, to=to, cc=cc, bcc=bcc, reply_to=reply_to, sender=sender, key=key)
    mail._changed()
    return mail


def skip(reason: str) -> None:
    """Stop the notebook here: nothing is sent and the run is recorded as skipped.

    Raises :class:`Skipped`, which ``except Exception:`` does not catch. The skip is
    recorded in the run's parts folder as well as shown, so a ``%%capture`` cell or
    ``clear_output()`` cannot hide it from the runner.
    """
    record_skip(reason, os.environ.get(PARTS_DIR_ENV))
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display({SKIP_MIME: {"reason": reason}, "text/plain": f"Skipped: {reason}"}, raw=True)
    except ImportError:
        pass
    raise Skipped(reason)
