"""What a notebook does interactively: preview an email and send a test copy."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from notifier.config import Settings, load_settings
from notifier.message import Email, compose
from notifier.preview import render_preview
from notifier.transport import SendResult, transport_for

PLACEHOLDER_RECIPIENT = "recipients@job.invalid"
PROJECT_MARKERS = ("jobs.yaml", ".env", "pyproject.toml")


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding jobs.yaml, .env or pyproject.toml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder
    return here


def project_settings(root: Path | None = None) -> Settings:
    """Settings from the project's .env, with relative paths anchored at the project root."""
    root = root or project_root()
    settings = load_settings(dotenv_path=root / ".env")
    anchored: dict[str, object] = {
        name: root / getattr(settings, name)
        for name in ("outbox_dir", "runs_dir")
        if not getattr(settings, name).is_absolute()
    }
    database_url = _anchored_sqlite_url(settings.db_url, root)
    if database_url is not None:
        anchored["db_url"] = database_url
    return settings.with_overrides(**anchored)


def _anchored_sqlite_url(url: str, root: Path) -> str | None:
    """A relative SQLite file path made absolute at ``root``; None when there is nothing to do."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # the ledger reports a bad URL itself
    database = parsed.database or ""
    if (
        parsed.get_backend_name() != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file:")
        or Path(database).is_absolute()
    ):
        return None
    return parsed.set(database=str(root / database)).render_as_string(hide_password=False)


def default_recipients() -> dict[str, list[str]] | None:
    """The run's recipients for emails that name none (``NOTIFIER_DEFAULT_RECIPIENTS``).

    The runner sets the variable for the kernel as JSON ``{"to": [], "cc": [], "bcc": []}``;
    None when it is unset, empty or not in that shape (the preview then says the job decides).
    """
    from notifier.report import DEFAULT_RECIPIENTS_ENV

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

    from notifier.report import FROM_ENV, in_scheduled_run

    if in_scheduled_run():
        return os.environ.get(FROM_ENV) or "notifier@localhost"
    try:
        return project_settings().from_address
    except Exception:  # a broken .env must not break the preview
        return "notifier@localhost"


def send_test_copy(mail: Email, addresses: list[str]) -> list[SendResult]:
    """Send ``mail`` to ``addresses`` only (no cc/bcc), subject prefixed with [TEST]."""
    settings = project_settings()
    test_mail = replace(mail, to=addresses, cc=[], bcc=[], subject=f"[TEST] {mail.subject}")
    outgoing = compose(
        test_mail, default_sender=settings.from_address, max_size=settings.max_message_size
    )
    results = transport_for(settings).send([outgoing])
    for result in results:
        print("\n".join(result.summary_lines()))
    if settings.uses_outbox:
        print(f"(no SMTP_HOST set: open {settings.outbox_dir / 'index.html'} in a browser)")
    return results
