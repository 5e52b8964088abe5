"""What a notebook does interactively: preview an email and send a test copy."""

from __future__ import annotations

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
    sqlite_prefix = "sqlite:///"
    path = settings.db_url.removeprefix(sqlite_prefix)
    if settings.db_url.startswith(sqlite_prefix) and path and not path.startswith("/"):
        anchored["db_url"] = f"{sqlite_prefix}{root / path}"
    return settings.with_overrides(**anchored)


def preview(mail: Email, *, budget: int | None = None) -> str:
    """HTML preview of ``mail`` as it would be sent (placeholder when recipients come later)."""
    overrides = {}
    if not (mail.to or mail.cc or mail.bcc):
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
