"""Helpers shared by the CLI commands."""

from __future__ import annotations

import sys
from pathlib import Path

from notifier.settings import Settings

_outbox_notice_shown = False
_unverified_warning_shown = False


def settings_from_env(*, smtp: bool = True) -> Settings:
    """Settings from the environment and the project's .env (ConfigError reaches the CLI).

    The project is the nearest folder at or above the current one holding jobs.yaml,
    .env or pyproject.toml, as for notebooks; relative paths are anchored there.
    ``smtp=False`` is for commands that never talk to the mail server (``list``,
    ``history``, ``send --dry-run``): a bad SMTP_* value does not stop them.
    """
    from notifier.project import project_root

    return _project_settings(project_root(), smtp=smtp)


def resolve_jobs_file(name: str) -> Path:
    """The jobs file: as given, else the same name in the project folder."""
    from notifier.project import project_root

    path = Path(name)
    if not path.is_absolute() and not path.exists():
        candidate = project_root() / path
        if candidate.exists():
            return candidate
    return path


def settings_for_jobs(jobs_file: Path, *, smtp: bool = True) -> Settings:
    """Settings of the project that holds ``jobs_file`` (its .env, ledger and outbox).

    ``smtp=False``: as for :func:`settings_from_env`.
    """
    from notifier.project import project_root

    if jobs_file.exists():
        return _project_settings(project_root(jobs_file.resolve().parent), smtp=smtp)
    return settings_from_env(smtp=smtp)


def _project_settings(root: Path, *, smtp: bool) -> Settings:
    from notifier.project import project_settings

    settings = project_settings(root, smtp=smtp)
    if smtp:
        warn_if_unverified(settings)  # these settings are for a command that connects
    return settings


def warn_if_unverified(settings: Settings) -> None:
    """Say once per process, on stderr, that TLS certificates will not be verified.

    The transport logs this too, but one-shot commands silence the SMTP logger.
    """
    global _unverified_warning_shown
    if _unverified_warning_shown or settings.verify or settings.uses_outbox:
        return
    _unverified_warning_shown = True
    print(
        f"warning: TLS certificate verification is OFF (SMTP_VERIFY=false) for "
        f"{settings.host}: anyone on the network path can read the password and the mail. "
        "Set SMTP_CA_FILE to your server's CA instead.",
        file=sys.stderr,
    )


def announce_outbox(settings: Settings, *, dry_run: bool = False) -> None:
    """Say once per process that mail goes to the outbox and where to open it."""
    global _outbox_notice_shown
    if _outbox_notice_shown or not (dry_run or settings.uses_outbox):
        return
    _outbox_notice_shown = True
    reason = (
        "--dry-run"
        if dry_run
        else "NOTIFIER_TRANSPORT=outbox"
        if settings.transport == "outbox"
        else "no SMTP_HOST is set"
    )
    advice = (
        ""
        if not settings.uses_outbox
        else " Set SMTP_* in .env to send for real; `notifier doctor` checks them."
    )
    print(
        f"note: {reason}: mail goes to the local outbox {settings.outbox_dir.resolve()} "
        f"(open {settings.outbox_dir.resolve() / 'index.html'} in a browser).{advice}",
        file=sys.stderr,
    )


def print_results(results: list) -> bool:
    """Print per-recipient results; True when every message fully succeeded."""
    ok = True
    for result in results:
        for line in result.summary_lines():
            print(line)
        ok = ok and result.ok
    return ok
