"""Which folder is the project, and the settings of a project.

The project is the nearest folder at or above a starting point (the current folder, or
the folder of a jobs file or notebook) that holds ``jobs.yaml``, ``.env`` or
``pyproject.toml``. Its ``.env`` supplies the settings, and relative paths in them
(outbox, runs folder, SQLite ledger) are anchored there, so that every command finds the
same files from anywhere inside the project.
"""

from __future__ import annotations

from pathlib import Path

from notifier.settings import Settings, load_settings

PROJECT_MARKERS = ("jobs.yaml", ".env", "pyproject.toml")


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding jobs.yaml, .env or pyproject.toml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder
    return here


def project_settings(root: Path | None = None, *, smtp: bool = True) -> Settings:
    """Settings from the project's .env, with relative paths anchored at the project root.

    ``smtp=False``: for commands that never send (the SMTP settings are not checked).
    """
    root = root or project_root()
    settings = load_settings(dotenv_path=root / ".env", smtp=smtp)
    anchored: dict[str, object] = {
        name: root / getattr(settings, name)
        for name in ("outbox_dir", "runs_dir")
        if not getattr(settings, name).is_absolute()
    }
    database_url = anchored_sqlite_url(settings.db_url, root)
    if database_url is not None:
        anchored["db_url"] = database_url
    return settings.with_overrides(**anchored)


def anchored_sqlite_url(url: str, root: Path) -> str | None:
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
