"""How far a running notebook is: the worker writes it, the runner passes it on.

The worker writes ``progress.json`` in the run folder as each code cell starts
(:class:`CellProgress`, an nbclient ``on_cell_start`` hook); the runner, while it waits for
the worker, reads it when it changes (:class:`ProgressReader`) and hands it to a callback
(the run path stores it in the ledger, where the dashboard shows it live)::

    {"cell": 2, "cells": 7, "started_at": "...", "cell_started_at": "..."}

``cell`` counts the user's code cells as they see them (papermill's injected parameters
cell does not count; 0 while the kernel starts), ``cells`` is how many there are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROGRESS_FILE = "progress.json"
_INJECTED_TAG = "injected-parameters"

Progress = dict[str, Any]
ProgressCallback = Callable[[Progress], None]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_user_code(cell: Any) -> bool:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return cell.get("cell_type") == "code" and _INJECTED_TAG not in tags


class CellProgress:
    """Writes ``progress.json`` (atomically) as cells start; never fails the run."""

    def __init__(self, folder: Path, notebook: Path) -> None:
        self.path = Path(folder) / PROGRESS_FILE
        try:
            cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells", [])
            self.cells = sum(1 for cell in cells if isinstance(cell, dict) and _is_user_code(cell))
        except (OSError, ValueError, AttributeError):
            self.cells = 0  # papermill reports an unreadable notebook itself
        self.cell = 0
        self.started_at = _now()
        self._write()

    def cell_started(self, cell: Any = None, cell_index: int | None = None, **_: Any) -> None:
        """nbclient's ``on_cell_start`` hook (called for every cell, markdown included)."""
        if cell is None or not _is_user_code(cell):
            return
        self.cell += 1
        self._write()

    def _write(self) -> None:
        record = {
            "cell": self.cell,
            "cells": max(self.cells, self.cell),
            "started_at": self.started_at,
            "cell_started_at": _now(),
        }
        tmp = self.path.with_name(f".{PROGRESS_FILE}.tmp")
        try:
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # progress is a nicety: a full disk must not fail the notebook here


class ProgressReader:
    """Reads ``progress.json`` of a run folder; :meth:`poll` returns it when it changed."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / PROGRESS_FILE
        self._seen: tuple[int, int] | None = None

    def poll(self) -> Progress | None:
        """The new progress record, or None when it did not change (or cannot be read)."""
        try:
            stat = self.path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            if key == self._seen:
                return None
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        self._seen = key
        return record if isinstance(record, dict) else None
