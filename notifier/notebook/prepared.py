"""A notebook worker started before its slot (a warm start), waiting for its one run.

:func:`start_prepared` starts ``python -m notifier.notebook.worker --prepare FILE`` exactly
as a cold run starts its worker (same environment without secrets, same sandbox, its own
session, PDEATHSIG and subreaper rules): it imports papermill, hides ``.env`` and starts
the kernel in the notebook's folder, then waits. At the slot,
:func:`notifier.notebook.execute.execute` hands it the run's spec (:meth:`PreparedWorker.hand_over`)
and supervises it like a cold worker, with the same wall-clock timeout; a worker whose slot
is cancelled is shut down (:meth:`PreparedWorker.discard`). One prepared worker and its kernel
serve exactly one run.

Its folder, ``<runs>/.warm/<job>-<id>/``, holds ``prepare.json``, ``worker.log`` (copied
into the run folder after the run), ``tmp/`` (the kernel's TMPDIR, fixed when it started)
and ``ready`` (written when the kernel answers); it is removed after the run or the cancel.
The run-specific values a cold kernel has in its environment (run id, parts folder,
default recipients, From) are set in the prepared kernel before the first cell.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from notifier.notebook.bundle import DEFAULT_RECIPIENTS_ENV, PARTS_DIR_ENV, RUN_ID_ENV
from notifier.notebook.processes import kill_tree
from notifier.notebook.sandbox import folders_state
from notifier.settings import Settings, kernel_environment

if TYPE_CHECKING:
    from notifier.notebook.forkserver import ForkedProcess, ForkServer

PARENT_PID_ENV = "NOTIFIER_PARENT_PID"
# in a prepared worker's (and so its kernel's) environment: its folder, where the run that
# took it is named (``run_id``): how tools find the kernel of a run that started warm
PREPARED_FOLDER_ENV = "NOTIFIER_PREPARED_FOLDER"
WARM_FOLDER = ".warm"  # under the runs folder; no job folder can have this name
CANNOT_PREPARE = 3  # the worker's exit status when its kernel could not be prepared
DEFAULT_MAX_WAIT = 3600.0  # a prepared worker nobody uses exits by itself after this


def secret_files(notebook: Path, settings: Settings) -> list[Path]:
    """The ``.env`` files (where SMTP_PASSWORD lives), which no notebook needs to read: the
    one the settings were read from, the notebook's project's and the current folder's."""
    from notifier.project import project_root

    candidates = {
        *settings.env_files,
        project_root(notebook.parent) / ".env",
        Path.cwd() / ".env",
    }
    return sorted(path.resolve() for path in candidates if path.is_file())


def _project(notebook: Path) -> Path:
    """The notebook's project folder: where its data files are likely to change."""
    from notifier.project import project_root

    return project_root(notebook.parent)


def worker_environment(scratch: Path) -> dict[str, str]:
    """The environment of a notebook worker (and so of its kernel): no SMTP credentials,
    temporary files in ``scratch``; the run's own variables are added by the runner."""
    env = kernel_environment()
    for name in (RUN_ID_ENV, PARTS_DIR_ENV, DEFAULT_RECIPIENTS_ENV):
        env.pop(name, None)
    env.update(
        {
            # the worker exits when this process dies (also when this process is PID 1)
            PARENT_PID_ENV: str(os.getpid()),
            # temporary and runtime files (the kernel's connection file) in a folder of
            # the run, which the kernel can read whatever the sandbox hides elsewhere
            "TMPDIR": str(scratch),
            "JUPYTER_RUNTIME_DIR": str(scratch),
            "NOTIFIER_SOCKET_DIR": tempfile.gettempdir(),  # kernel sockets: a short path
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "JUPYTER_PLATFORM_DIRS": "1",
            "MPLBACKEND": env.get("MPLBACKEND", "Agg"),
        }
    )
    return env


@dataclass(eq=False)
class PreparedWorker:
    """One prepared worker process: what it was prepared for, and its folder."""

    job_name: str
    slot: datetime
    notebook: Path
    kernel_name: str | None
    warm_imports: bool
    hidden_files: list[str]
    folder: Path
    proc: subprocess.Popen[bytes] | ForkedProcess  # started with --prepare, or forked
    fingerprint: str = ""  # of the job it was prepared for (set by the pool)
    # the folders on the way to the hidden files, as they were when it was sandboxed
    folders: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    handed_over: bool = False

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """True while the worker process runs."""
        return self.proc.poll() is None

    @property
    def ready(self) -> bool:
        """True once its kernel answered (it may still be waiting for its run)."""
        return (self.folder / "ready").is_file()

    @property
    def kernel_pid(self) -> int | None:
        """The prepared kernel's process id, once it is ready."""
        try:
            return int(json.loads((self.folder / "ready").read_text())["kernel_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def fits(self, notebook: Path, kernel_name: str | None, hidden: list[Path]) -> bool:
        """Was it prepared for this notebook, kernel choice and sandbox, and can it read
        what a cold run could (no file came or went next to a hidden one since)?"""
        notebook = Path(notebook).resolve()
        return (
            self.notebook == notebook
            and self.kernel_name == kernel_name
            and self.hidden_files == [str(path) for path in hidden]
            and self.folders == folders_state(self.hidden_files, _project(notebook))
        )

    def hand_over(self, spec: dict[str, Any], run_id: str) -> None:
        """Give the worker its run (spec.json as one line on stdin). OSError when it is gone."""
        assert self.proc.stdin is not None and not self.handed_over
        self.handed_over = True
        (self.folder / "run_id").write_text(run_id, encoding="utf-8")  # who took it
        try:
            self.proc.stdin.write(json.dumps(spec).encode("utf-8") + b"\n")
            self.proc.stdin.flush()
        finally:
            self._close_stdin()

    def cancel(self) -> None:
        """Tell the worker that no run comes: it shuts its kernel down and exits."""
        self.handed_over = True
        self._close_stdin()

    def _close_stdin(self) -> None:
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass  # it already exited

    def kill(self) -> None:
        """Kill the worker and everything it started."""
        kill_tree(self.proc.pid)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def discard(self, grace: float = 10.0) -> None:
        """Cancel, wait ``grace`` seconds for a clean exit, else kill; remove the folder."""
        self.cancel()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
        self.remove_folder()

    def copy_log(self, target: Path) -> None:
        """Append what the worker logged to ``target`` (the run's worker.log)."""
        try:
            data = (self.folder / "worker.log").read_bytes()
        except OSError:
            return
        with open(target, "ab") as sink:
            sink.write(data)

    def remove_folder(self) -> None:
        """Remove the worker's folder (its kernel's temporary files included)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def start_prepared(
    settings: Settings,
    *,
    job_name: str,
    slot: datetime,
    notebook: Path,
    kernel_name: str | None = None,
    warm_imports: bool = False,
    start_timeout: float = 60.0,
    max_wait: float = DEFAULT_MAX_WAIT,
    server: ForkServer | None = None,
) -> PreparedWorker:
    """Start a worker for ``job_name``'s ``slot``; it prepares while this returns at once.

    Forked by ``server`` when it runs (:mod:`notifier.notebook.forkserver`), else started
    as ``python -m notifier.notebook.worker --prepare``. The calling thread must outlive
    the worker: Linux sends the worker SIGTERM when the thread that started it ends
    (PR_SET_PDEATHSIG is per thread).
    """
    notebook = Path(notebook).resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", job_name).strip("-.")[:40] or "job"
    folder = (settings.runs_dir / WARM_FOLDER / f"{name}-{uuid.uuid4().hex[:8]}").resolve()
    (folder / "tmp").mkdir(parents=True)
    hidden = [str(path) for path in secret_files(notebook, settings)]
    folders = folders_state(hidden, _project(notebook))  # before the worker's sandbox
    prepare = {
        "notebook": str(notebook),
        "cwd": str(notebook.parent),
        # the kernel cannot read these (Linux Landlock; see notifier.notebook.sandbox)
        "hidden_files": hidden,
        "kernel_name": kernel_name,
        "start_timeout": start_timeout,
        "warm_imports": warm_imports,
        "ready": str(folder / "ready"),
        "max_wait": max_wait,
    }
    (folder / "prepare.json").write_text(json.dumps(prepare, indent=2), encoding="utf-8")
    env = worker_environment(folder / "tmp")
    env[PREPARED_FOLDER_ENV] = str(folder)
    proc: subprocess.Popen[bytes] | ForkedProcess | None = None
    if server is not None:
        try:
            proc = server.spawn(folder / "prepare.json", env, folder / "worker.log")
        except OSError:
            proc = None  # started the ordinary way below
    if proc is None:
        with open(folder / "worker.log", "ab") as worker_log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "notifier.notebook.worker", "--prepare"]
                + [str(folder / "prepare.json")],
                env=env,
                stdin=subprocess.PIPE,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    return PreparedWorker(
        job_name=job_name,
        slot=slot,
        notebook=notebook,
        kernel_name=kernel_name,
        warm_imports=warm_imports,
        hidden_files=hidden,
        folder=folder,
        proc=proc,
        folders=folders,
    )
