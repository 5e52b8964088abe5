"""Write small test notebooks (nbformat v4, python3 kernel) for runner and CLI tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

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
    """Live ipykernel_launcher processes started for ``run_id`` (zombies do not count)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if not any("ipykernel_launcher" in part for part in proc.info["cmdline"] or []):
                continue
            if proc.environ().get("NOTIFIER_RUN_ID") == run_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
