"""Helpers shared by the CLI commands."""

from __future__ import annotations

import sys
from pathlib import Path

from notifier.config import Settings

_outbox_notice_shown = False


def settings_from_env() -> Settings:
    """Settings from the environment and the project's .env (ConfigError reaches the CLI).

    The project is the nearest folder at or above the current one holding jobs.yaml,
    .env or pyproject.toml, as for notebooks; relative paths are anchored there.
    """
    from notifier.interactive import project_settings

    return project_settings()


def resolve_jobs_file(name: str) -> Path:
    """The jobs file: as given, else the same name in the project folder."""
    from notifier.interactive import project_root

    path = Path(name)
    if not path.is_absolute() and not path.exists():
        candidate = project_root() / path
        if candidate.exists():
            return candidate
    return path


def settings_for_jobs(jobs_file: Path) -> Settings:
    """Settings of the project that holds ``jobs_file`` (its .env, ledger and outbox)."""
    from notifier.interactive import project_root, project_settings

    if jobs_file.exists():
        return project_settings(project_root(jobs_file.resolve().parent))
    return settings_from_env()


def announce_outbox(settings: Settings, *, dry_run: bool = False) -> None:
    """Say once per process that mail goes to the outbox and where to open it."""
    global _outbox_notice_shown
    if _outbox_notice_shown or not (dry_run or settings.uses_outbox):
        return
    _outbox_notice_shown = True
    reason = "--dry-run" if dry_run else "no SMTP_HOST is set"
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
