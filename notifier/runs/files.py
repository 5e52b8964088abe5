"""What a user reads about a run, kept in the ledger so that every node can show it.

A run executes on one node, in that node's run folder; with several nodes on one ledger
the others (their ``notifier history``, ``notifier show``, the dashboard) cannot read
that folder. So after execution the run path copies what a user needs into the ledger
(:meth:`~notifier.ledger.Ledger.save_run_file`, compressed, removed with the run by
``keep_runs``):

* ``output.html``: the rendered output notebook (already scrubbed of secrets);
* ``worker.log``: the worker's log (its last :data:`MAX_LOG_BYTES` when it is longer);
* ``failure.json``: for a failed notebook, the error, the failing cell's source and the
  traceback (what the failure email shows).

The emails as sent are in the ledger's queue already (messages and their parts). Read
them back with ``ledger.run_file(run_id, OUTPUT)`` and so on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from notifier.ledger import Ledger, LedgerError, Run
from notifier.notebook.execute import Execution
from notifier.settings import Settings, redact

log = logging.getLogger("notifier.runs")

OUTPUT = "output.html"
LOG = "worker.log"
FAILURE = "failure.json"
NAMES = (OUTPUT, LOG, FAILURE)

# An output larger than this stays in the run folder only (history says where).
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_LOG_BYTES = 1024 * 1024

# ``call(fn, what)``: how a ledger write is made (e.g. retried while the ledger is busy)
LedgerCall = Callable[[Callable[[], Any], str], Any]


def _tail(data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    cut = len(data) - limit
    return f"[... the first {cut} bytes are left out ...]\n".encode() + data[cut:]


def collect(execution: Execution, settings: Settings) -> dict[str, bytes]:
    """The files of an execution to keep in the ledger, by name."""
    files: dict[str, bytes] = {}
    html = execution.output_html
    if html.is_file():
        size = html.stat().st_size
        if size <= MAX_FILE_BYTES:
            files[OUTPUT] = html.read_bytes()
        else:
            log.warning(
                "%s: output.html is %d MB, more than the ledger keeps; it stays in %s",
                execution.request.job_name,
                size // 2**20,
                execution.run_dir,
            )
    worker_log = execution.run_dir / LOG
    if worker_log.is_file():
        files[LOG] = _tail(worker_log.read_bytes(), MAX_LOG_BYTES)
    if execution.status == "failed" and (execution.failure or execution.error):
        details = {"error": execution.error, **(execution.failure or {})}
        text = json.dumps(details, indent=2, default=str)
        files[FAILURE] = redact(text, settings.secrets()).encode("utf-8")
    return files


def keep(
    ledger: Ledger,
    settings: Settings,
    run: Run,
    execution: Execution,
    *,
    call: LedgerCall | None = None,
) -> list[str]:
    """Copy the run's files into the ledger (fenced by its attempt); the names kept.

    ``call(fn, what)`` makes each write (the run path's waits out a busy ledger). A ledger
    that refuses (the run was taken over) or fails all the same keeps nothing more: the
    run folder on this node still has everything, and the run itself goes on.
    """
    kept: list[str] = []
    through = call or (lambda fn, _what: fn())
    try:
        for name, data in collect(execution, settings).items():
            saved = through(
                lambda name=name, data=data: ledger.save_run_file(
                    run.run_id, name, data, attempt=run.attempt
                ),
                f"keeping {name} of run {run.run_id} of {run.job}",
            )
            if not saved:
                break  # taken over: the new attempt keeps its own files
            kept.append(name)
    except (LedgerError, OSError) as error:
        log.warning("%s: could not keep the run's files in the ledger: %s", run.job, error)
    return kept
