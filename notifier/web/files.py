"""A run's files (output.html, worker.log, result.json): from the ledger first, so every
node shows runs that executed on another, else from the run folder on this machine.

The folder is the one the ledger names (``output_path``) or, for a run that wrote no output
notebook, ``runs/<job>/*-<run id>*``; either way a file is read only when it lies inside
the project's runs folder (:func:`notifier.web.security.inside`): a path in the ledger is
never trusted as it stands.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from notifier.ledger import Ledger, Run
from notifier.notebook.execute import job_runs_folder
from notifier.settings import Settings
from notifier.web.security import inside

_RUN_ID = re.compile(r"^[0-9a-f]{8,64}$")
LOG_TAIL = 400  # lines of worker.log shown on the page


def run_folder(settings: Settings, run: Run) -> Path | None:
    """The run's folder on this machine, inside the runs folder, or None."""
    runs = settings.runs_dir
    if run.output_path:
        found = inside(runs, run.output_path)
        if found is not None:
            return found.parent
    if not _RUN_ID.match(run.run_id):
        return None
    folder = job_runs_folder(runs, run.job)
    try:
        candidates = sorted(folder.glob(f"*-{run.run_id}*"))
    except OSError:
        return None
    for candidate in reversed(candidates):  # the newest attempt
        if (candidate / "spec.json").is_file() and inside(runs, candidate / "spec.json"):
            return candidate.resolve()
    return None


def run_file(ledger: Ledger, settings: Settings, run: Run, name: str) -> bytes | None:
    """The run's file ``name``: kept in the ledger, else read from its folder (checked)."""
    try:
        data = ledger.run_file(run.run_id, name)
    except Exception:  # an older ledger without run_files, or a busy database
        data = None
    if data is not None:
        return data
    folder = run_folder(settings, run)
    if folder is None:
        return None
    path = inside(settings.runs_dir, folder / name)
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError:
        return None


def failure_record(ledger: Ledger, settings: Settings, run: Run) -> dict[str, Any] | None:
    """The worker's error record of a failed run (failing cell, source, traceback)."""
    data = run_file(ledger, settings, run, "result.json")
    if not data:
        return None
    try:
        result = json.loads(data)
    except ValueError:
        return None
    error = result.get("error") if isinstance(result, dict) else None
    return error if isinstance(error, dict) else None


def log_tail(data: bytes | None, lines: int = LOG_TAIL) -> tuple[str, bool]:
    """The last ``lines`` lines of a log as text, and whether it was cut."""
    if not data:
        return "", False
    text = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:]), len(text) > lines
