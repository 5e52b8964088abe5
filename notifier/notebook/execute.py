"""Executing a notebook headlessly: the worker process, its run folder, what it declared.

This module only *executes*: planning, queueing and delivering the emails, failure
emails, retries and alerts are the run path's (:mod:`notifier.runs.path`), shared by
scheduled slots, ``notifier run JOB`` and ``notifier run NOTEBOOK``.

The notebook runs in a worker process (``notifier.notebook.worker``) started without SMTP
credentials and killed with its whole process tree at the wall-clock timeout: a new one
(a cold start), or one the daemon prepared before the slot (``prepared=``, a warm start,
:mod:`notifier.notebook.prepared`), which is handed the run and supervised the same way.

Layout of a run folder: ``runs/<job>/<YYYYmmddTHHMMSS>-<run id>/`` with
``output.ipynb``, ``output.html``, ``parts/`` (charts and attachments the emails
reference), ``worker.log``, ``spec.json`` (what was run), ``result.json`` (the
worker's outcome and timings) and ``progress.json`` (the cell running now).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from notifier.errors import RunError
from notifier.mail.model import Email
from notifier.notebook.bundle import (
    FROM_ENV,
    PARTS_DIR_ENV,
    RUN_ID_ENV,
    default_recipients_environment,
)
from notifier.notebook.cell_errors import error_summary
from notifier.notebook.params import check_parameters
from notifier.notebook.prepared import (
    CANNOT_PREPARE,
    PARENT_PID_ENV,
    PreparedWorker,
    secret_files,
    worker_environment,
)
from notifier.notebook.processes import kill_tree
from notifier.notebook.progress import ProgressCallback, ProgressReader
from notifier.settings import DEFAULT_RUN_TIMEOUT, Settings

__all__ = ["PARENT_PID_ENV", "Execution", "RunRequest", "execute", "terminate_active_workers"]

log = logging.getLogger("notifier.notebook")

DEFAULT_TIMEOUT = DEFAULT_RUN_TIMEOUT
PROGRESS_POLL = 0.5  # seconds between looks at the worker's progress.json
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class RunRequest:
    """What to execute. Recipients are the defaults for emails that name none."""

    notebook: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    job_name: str | None = None
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    timeout: float = DEFAULT_TIMEOUT
    cell_timeout: float | None = None
    scheduled_for: datetime | None = None
    run_id: str | None = None
    kernel_name: str | None = None  # None: the notebook's kernel, else this Python
    hide_code: bool = False  # the archived output without the code

    @property
    def name(self) -> str:
        """The job name, or the notebook's file name without .ipynb."""
        return self.job_name or Path(self.notebook).stem


@dataclass
class Execution:
    """The result of executing a notebook (before delivery)."""

    request: RunRequest
    run_id: str
    run_dir: Path
    status: str  # succeeded | skipped | failed
    emails: list[Email] = field(default_factory=list)
    skip_reason: str | None = None
    error: str | None = None
    failure: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0
    warnings: list[str] = field(default_factory=list)  # from the worker (e.g. the kernel)

    @property
    def output_notebook(self) -> Path:
        """The executed notebook in the run folder."""
        return self.run_dir / "output.ipynb"

    @property
    def output_html(self) -> Path:
        """Its HTML rendering."""
        return self.run_dir / "output.html"


def new_run_id() -> str:
    """A short random id for a run that is not in the ledger."""
    return uuid.uuid4().hex[:12]


def job_runs_folder(runs_dir: Path, job_name: str) -> Path:
    """``runs/<job>``: where every run folder of a job (or ad-hoc notebook) lives."""
    name = job_name.removesuffix(".ipynb")  # an ad-hoc run is named after its notebook
    return runs_dir / (_SAFE_NAME.sub("-", name).strip("-.") or "job")


def run_folder(runs_dir: Path, job_name: str, run_id: str, when: datetime) -> Path:
    """A new ``runs/<job>/<stamp>-<run id>[-N]`` folder (each attempt gets its own)."""
    stamp = when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = job_runs_folder(runs_dir, job_name) / f"{stamp}-{run_id}"
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for number in range(1, 1000):
            folder = base if number == 1 else base.with_name(f"{base.name}-{number}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            (folder / "parts").mkdir()
            return folder
    except OSError as error:
        raise RunError(
            f"Cannot create the run folder under {runs_dir}: {error.strerror or error}.",
            "set NOTIFIER_RUNS_DIR to a writable folder",
        ) from None
    raise RunError(f"Too many attempts in {base.parent}.", "remove old run folders")


def _parameter_strings(value: Any) -> list[str]:
    """Every key and leaf value as text (json.dumps would escape quotes and non-ASCII)."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _parameter_strings(k) + _parameter_strings(v)]
    if isinstance(value, list | tuple | set):
        return [s for item in value for s in _parameter_strings(item)]
    return [str(value)]


def refuse_secret_parameters(parameters: dict[str, Any], secrets: list[str]) -> None:
    """RunError when a parameter (a key or any value, nested too) holds a secret.

    The run path checks before it claims a run (the ledger stores the parameters), and
    :func:`execute` again before the worker starts (the output notebook keeps them).
    """
    texts = _parameter_strings(parameters)
    if any(secret and secret in text for secret in secrets for text in texts):
        raise RunError(
            "A notebook parameter contains the SMTP password; parameters are saved in the "
            "output notebook.",
            "never pass credentials as parameters: the runner sends the mail itself",
        )


def execute(
    request: RunRequest,
    settings: Settings,
    *,
    progress: ProgressCallback | None = None,
    prepared: PreparedWorker | None = None,
) -> Execution:
    """Run the notebook in a worker process and read back what it declared.

    Raises RunError before starting for a missing notebook or an undeclared parameter.
    Everything that goes wrong after the start is an Execution with status 'failed'.
    ``progress`` is called with the worker's progress record (cell i of n) as it changes.
    ``prepared``: a worker started for this run before its slot (a warm start); used when
    it fits (same notebook, kernel and hidden files), else shut down and the run starts
    cold; either way it is never used again.
    """
    try:
        notebook = Path(request.notebook).resolve()
        check_parameters(notebook, request.parameters)
        refuse_secret_parameters(request.parameters, settings.secrets())
        run_id = request.run_id or new_run_id()
        scheduled_for = request.scheduled_for or datetime.now(timezone.utc)
        run_dir = run_folder(settings.runs_dir, request.name, run_id, scheduled_for).resolve()
    except BaseException:
        if prepared is not None:
            prepared.discard()
        raise
    hidden = secret_files(notebook, settings)
    if prepared is not None and not prepared.fits(notebook, request.kernel_name, hidden):
        log.info("%s: the prepared worker does not fit this run: starting cold", request.name)
        prepared.discard()
        prepared = None
    parameters = {
        **request.parameters,
        "run_id": run_id,
        "scheduled_for": scheduled_for.isoformat(),
        "job_name": request.name,
    }
    spec = {
        "notebook": str(notebook),
        "output": str(run_dir / "output.ipynb"),
        "result": str(run_dir / "result.json"),
        "parameters": parameters,
        "cwd": str(notebook.parent),
        # the kernel cannot read these (Linux Landlock; see notifier.notebook.sandbox)
        "hidden_files": [str(path) for path in hidden],
        "kernel_name": request.kernel_name,
        "hide_code": request.hide_code,
        "cell_timeout": request.cell_timeout,
        "start_timeout": min(60.0, request.timeout),
        "warm": prepared is not None,
    }
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    # what the kernel reads from its environment during the run (never a secret)
    run_environment = {
        FROM_ENV: settings.from_address,  # the preview's From: the kernel never reads .env
        PARTS_DIR_ENV: str(run_dir / "parts"),
        RUN_ID_ENV: run_id,
        # the preview shows the real recipients of emails that name none
        **default_recipients_environment(request.to, request.cc, request.bcc),
    }
    log.debug("run %s of %s started (%s)", run_id, request.name, notebook.name)
    started = time.perf_counter()
    timed_out = None
    if prepared is not None:
        timed_out = _run_prepared(prepared, spec, run_environment, request.timeout, progress)
    if timed_out is None:  # cold, or the prepared worker could not take the run
        left = request.timeout - (time.perf_counter() - started)
        timed_out = _run_cold(run_dir, run_environment, max(left, 1.0), progress)
    execution = Execution(request, run_id, run_dir, "failed")
    execution.duration = time.perf_counter() - started
    _finish_execution(execution, settings, timed_out)
    log.debug(
        "run %s of %s executed: %s in %.1fs%s",
        run_id,
        request.name,
        execution.status,
        execution.duration,
        f" ({execution.error})" if execution.error else "",
    )
    return execution


def _run_cold(
    run_dir: Path,
    run_environment: dict[str, str],
    timeout: float,
    progress: ProgressCallback | None,
) -> bool:
    """A new worker for the run (a cold start); True when it timed out."""
    scratch = run_dir / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {**worker_environment(scratch), **run_environment}
    try:
        return _run_worker(run_dir, env, timeout, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_prepared(
    prepared: PreparedWorker,
    spec: dict[str, Any],
    run_environment: dict[str, str],
    timeout: float,
    progress: ProgressCallback | None,
) -> bool | None:
    """Hand the run to a prepared worker and supervise it as a cold one; True when it
    timed out, None when it could not take the run (it died, or could not prepare)."""
    run_dir = Path(spec["result"]).parent
    if not prepared.alive:  # it could not prepare (or was killed): nothing of the run ran yet
        prepared.copy_log(run_dir / "worker.log")
        prepared.remove_folder()
        log.warning("the prepared worker for run %s is gone: starting cold", run_dir.name)
        return None
    try:
        prepared.hand_over({**spec, "environment": run_environment}, spec["parameters"]["run_id"])
    except OSError:
        pass  # it exited meanwhile: its exit status says why
    try:
        timed_out = _supervise(prepared.proc, run_dir, timeout, progress)
    finally:
        prepared.copy_log(run_dir / "worker.log")
        prepared.remove_folder()
    if prepared.proc.returncode == CANNOT_PREPARE and not (run_dir / "result.json").is_file():
        log.warning("the prepared worker could not take run %s: starting cold", run_dir.name)
        return None
    return timed_out


_active_workers: dict[int, subprocess.Popen[bytes]] = {}
_active_lock = threading.Lock()


def terminate_active_workers() -> int:
    """Kill every running notebook worker and its kernel (daemon shutdown); returns how many."""
    with _active_lock:
        pids = list(_active_workers)
    for pid in pids:
        kill_tree(pid)
    return len(pids)


def _wait(
    proc: subprocess.Popen[bytes], run_dir: Path, timeout: float, progress: ProgressCallback | None
) -> None:
    """``proc.wait(timeout)``, passing the worker's progress on while it runs."""
    if progress is None:
        proc.wait(timeout=timeout)
        return
    reader = ProgressReader(run_dir)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            proc.wait(timeout=max(0.0, min(PROGRESS_POLL, left)))
            return
        except subprocess.TimeoutExpired:
            if left <= PROGRESS_POLL:
                raise
        record = reader.poll()
        if record is not None:
            try:
                progress(record)
            except Exception as error:  # the ledger may be busy: progress is not worth a run
                log.debug("progress not recorded: %s", error)


def _run_worker(
    run_dir: Path, env: dict[str, str], timeout: float, progress: ProgressCallback | None = None
) -> bool:
    """Start the worker and wait; on timeout kill its tree. True when it timed out."""
    with open(run_dir / "worker.log", "ab") as worker_log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notifier.notebook.worker", str(run_dir / "spec.json")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return _supervise(proc, run_dir, timeout, progress)


def _supervise(
    proc: subprocess.Popen[bytes],
    run_dir: Path,
    timeout: float,
    progress: ProgressCallback | None = None,
) -> bool:
    """Wait for a worker that has its run; on timeout kill its tree. True when it timed out."""
    with _active_lock:
        _active_workers[proc.pid] = proc
    try:
        _wait(proc, run_dir, timeout, progress)
        return False
    except subprocess.TimeoutExpired:
        killed = kill_tree(proc.pid)
        proc.wait()
        log.warning("run timed out after %.0fs; killed processes %s", timeout, killed)
        return True
    except BaseException:
        kill_tree(proc.pid)
        raise
    finally:
        with _active_lock:
            _active_workers.pop(proc.pid, None)


def _finish_execution(execution: Execution, settings: Settings, timed_out: bool) -> None:
    from notifier.notebook.archive import render_html, scrub_file
    from notifier.notebook.bundle import collect

    run_dir = execution.run_dir
    for name in ("output.ipynb", "output.html", "worker.log", "result.json"):
        scrub_file(run_dir / name, settings.secrets())
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if result:
        execution.timings = result.get("timings", {})
        execution.warnings = [str(w) for w in result.get("warnings", [])]
    if execution.output_notebook.is_file() and not execution.output_html.is_file():
        try:
            render_html(
                execution.output_notebook,
                execution.output_html,
                hide_code=execution.request.hide_code,
            )
            scrub_file(execution.output_html, settings.secrets())
        except Exception as error:  # a half-written notebook must not hide the real failure
            log.warning("could not render %s: %s", execution.output_notebook, error)

    collected = None
    unreadable = "the worker wrote no output notebook"
    if execution.output_notebook.is_file():
        try:
            collected = collect(execution.output_notebook, run_dir / "parts")
        except (RunError, ValueError) as error:  # e.g. cut off by the kill: report the cause
            unreadable = f"the output notebook could not be read: {error}"
    if timed_out:
        execution.error = f"timed out after {execution.request.timeout:.0f}s; the kernel was killed"
        execution.failure = {"kind": "timeout", "ename": "Timeout", "evalue": execution.error}
        return
    if result is None:
        tail = _tail(run_dir / "worker.log")
        execution.error = "the notebook worker died before reporting a result"
        execution.failure = {"kind": "worker", "ename": "WorkerDied", "evalue": tail}
        return
    error = result.get("error")
    if collected is not None and collected.skip_reason is not None:
        execution.status = "skipped"
        execution.skip_reason = collected.skip_reason
        return
    if error:
        execution.failure = error
        execution.error = error_summary(error, execution.request.cell_timeout)
        return
    if collected is None:
        execution.error = unreadable
        execution.failure = {"kind": "collect", "ename": "RunError", "evalue": unreadable}
        return
    execution.status = "succeeded"
    execution.emails = [_with_default_recipients(m, execution.request) for m in collected.emails]
    execution.warnings += [
        f"email {subject!r} is sent but not shown in the output notebook (its output was "
        "captured with %%capture or removed with clear_output()); to show it, end a later "
        "cell with it"
        for subject in collected.not_shown
    ]


def _tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _with_default_recipients(mail: Email, request: RunRequest) -> Email:
    if mail.to or mail.cc or mail.bcc:
        return mail
    return replace(mail, to=list(request.to), cc=list(request.cc), bcc=list(request.bcc))
