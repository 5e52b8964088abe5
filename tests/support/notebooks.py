"""Write small test notebooks (nbformat v4, python3 kernel); run them through the worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def _code(source: str, tags: list[str] | None = None) -> nbformat.NotebookNode:
    cell = new_code_cell(textwrap.dedent(source).strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def write_notebook(
    path: Path,
    *cells: str,
    parameters: str | None = "",
    markdown: str | None = None,
) -> Path:
    """Write a notebook to ``path`` and return it.

    ``parameters`` is the source of the first cell, tagged ``parameters`` (pass None
    for a notebook without such a cell); ``cells`` are the following code cells
    (dedented). ``markdown`` adds a markdown cell after the parameters cell.
    """
    nb = new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    if parameters is not None:
        nb.cells.append(_code(parameters, ["parameters"]))
    if markdown is not None:
        nb.cells.append(new_markdown_cell(markdown))
    nb.cells.extend(_code(source) for source in cells)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return path


def kernels_of_run(run_id: str) -> list:
    """Live ipykernel_launcher processes started for ``run_id`` (zombies do not count).

    A cold run's kernel has the run id in its environment; a prepared (warm) kernel was
    started before its run, so it is found through its worker, whose folder names the run
    that took it (``<runs>/.warm/<id>/run_id``; the folder is in the kernel's environment).
    """
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if not any("ipykernel_launcher" in part for part in proc.info["cmdline"] or []):
                continue
            if proc.environ().get("NOTIFIER_RUN_ID") == run_id or _prepared_for(proc) == run_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _prepared_for(kernel) -> str | None:
    """The run that took the prepared worker this kernel belongs to (None: not prepared)."""
    folder = kernel.environ().get("NOTIFIER_PREPARED_FOLDER")
    if not folder:
        return None
    try:
        return (Path(folder) / "run_id").read_text(encoding="utf-8")
    except OSError:
        return None


@dataclass
class WorkerRun:
    """What ``python -m notifier.notebook.worker`` left in its run folder."""

    result: dict[str, Any]
    run_dir: Path
    log: str

    @property
    def output(self) -> Path:
        """The executed notebook."""
        return self.run_dir / "output.ipynb"

    @property
    def html(self) -> Path:
        """Its HTML rendering."""
        return self.run_dir / "output.html"

    @property
    def error(self) -> dict[str, Any]:
        """The error record of a failed run."""
        assert self.result["status"] == "error", self.result
        return self.result["error"]


def run_worker(
    folder: Path,
    notebook: Path,
    parameters: dict[str, Any] | None = None,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    **spec: Any,
) -> WorkerRun:
    """Run ``notebook`` through the worker process, as the runner does, with a spec we write.

    ``spec`` adds or overrides spec.json keys (kernel_name, hide_code, cell_timeout...);
    ``env`` adds variables to the kernel's environment.
    """
    run_dir = Path(folder) / "run"
    (run_dir / "parts").mkdir(parents=True)
    spec_data = {
        "notebook": str(notebook),
        "output": str(run_dir / "output.ipynb"),
        "result": str(run_dir / "result.json"),
        "parameters": parameters or {},
        "cwd": str(Path(notebook).parent),
        "cell_timeout": 120,
        "start_timeout": 60,
        **spec,
    }
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec_data), encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "NOTIFIER_"))}
    environment.update(
        {
            "NOTIFIER_PARTS_DIR": str(run_dir / "parts"),
            "NOTIFIER_RUN_ID": "worker-test",
            "MPLBACKEND": "Agg",
            "JUPYTER_PLATFORM_DIRS": "1",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            **(env or {}),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "notifier.notebook.worker", str(spec_path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = proc.stdout + proc.stderr
    result_path = run_dir / "result.json"
    assert result_path.is_file(), f"the worker wrote no result (exit {proc.returncode}):\n{log}"
    return WorkerRun(json.loads(result_path.read_text(encoding="utf-8")), run_dir, log)
