"""What went wrong in a notebook run, named the way the user sees their notebook.

papermill reports errors against the *output* notebook: it counts the injected
parameters cell and the markers it adds, its ``CellExecutionError`` can come with
an empty message (an unknown ``%magic`` only writes to stderr), and a SyntaxError
names the kernel's temporary file. :func:`error_details` turns an exception from
``papermill.execute_notebook`` into the record the worker writes to result.json::

    {"kind": "cell", "ename": "ValueError", "evalue": "boom", "cell_number": 2,
     "source": "...", "traceback": "...", "summary": "cell 2 raised ValueError: boom"}

``cell_number`` is the failing cell's position among the source notebook's code cells
(1-based; papermill's injected-parameters cell does not count), also for cell timeouts
and dead kernels when the output notebook shows which cell was running.
"""

from __future__ import annotations

import json
import re
import traceback as traceback_module
from pathlib import Path
from typing import Any

from notifier.errors import NotifierError

INJECTED_TAG = "injected-parameters"
ERROR_MARKER_TAG = "papermill-error-cell-tag"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# "invalid syntax (685837578.py, line 1)": ipykernel compiles each cell as <hash>.py
_KERNEL_FILE = re.compile(r" \((?:[^()]*[/\\])?\d+\.py, (line \d+)\)")
_SYNTAX_ERRORS = {"SyntaxError", "IndentationError", "TabError"}
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): ?(.*)$")


def strip_ansi(text: str) -> str:
    """Remove terminal colour codes from a traceback."""
    return _ANSI.sub("", text)


def _tags(cell: dict[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []) or [])


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _read(output_notebook: Path | None) -> list[dict[str, Any]] | None:
    """The output notebook's cells without papermill's error markers; None when unreadable."""
    if output_notebook is None or not output_notebook.is_file():
        return None
    try:
        cells = json.loads(output_notebook.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return None
    return [c for c in cells if isinstance(c, dict) and ERROR_MARKER_TAG not in _tags(c)]


def cell_number(cells: list[dict[str, Any]], index: int) -> int | None:
    """1-based position of ``cells[index]`` among the user's code cells (None: not one)."""
    cell = cells[index]
    if cell.get("cell_type") != "code" or INJECTED_TAG in _tags(cell):
        return None
    return sum(
        1
        for c in cells[: index + 1]
        if c.get("cell_type") == "code" and INJECTED_TAG not in _tags(c)
    )


def _failing_index(
    cells: list[dict[str, Any]], cell_index: int | None, source: str | None
) -> int | None:
    """Which cell failed: papermill's index when it fits, else the last cell that raised."""
    if cell_index is not None and 0 <= cell_index < len(cells):
        cell = cells[cell_index]
        if cell.get("cell_type") == "code" and (
            source is None or _text(cell.get("source")) == source
        ):
            return cell_index
    for index in range(len(cells) - 1, -1, -1):
        cell = cells[index]
        raised = any(o.get("output_type") == "error" for o in cell.get("outputs", []) or [])
        if raised or cell.get("metadata", {}).get("papermill", {}).get("exception") is True:
            return index
    return None


def _running_index(cells: list[dict[str, Any]]) -> int | None:
    """The cell that was running when the run stopped: the last one that started."""
    for index in range(len(cells) - 1, -1, -1):
        cell = cells[index]
        if cell.get("cell_type") == "code" and cell.get("metadata", {}).get("papermill", {}).get(
            "start_time"
        ):
            return index
    return None


def _cause_from_output(cell: dict[str, Any]) -> tuple[str, str, str] | None:
    """(ename, evalue, text) of an error a cell only printed (IPython's UsageError)."""
    text = "".join(
        _text(o.get("text"))
        for o in cell.get("outputs", []) or []
        if o.get("output_type") == "stream" and o.get("name") == "stderr"
    )
    text = strip_ansi(text).strip()
    if not text:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match:
            return match.group(1), match.group(2), text
    return "CellExecutionError", lines[-1], text


def clean_evalue(ename: str, evalue: str) -> str:
    """The message without colour codes, and without the kernel's file name for syntax errors."""
    evalue = strip_ansi(evalue)
    if ename in _SYNTAX_ERRORS:
        evalue = _KERNEL_FILE.sub(r" (\1)", evalue)
    return evalue


def error_details(
    error: BaseException, output_notebook: Path | None = None, cell_timeout: float | None = None
) -> dict[str, Any]:
    """The result.json record of ``error``, raised by papermill for ``output_notebook``."""
    from papermill.exceptions import PapermillExecutionError

    cells = _read(output_notebook)
    name = type(error).__name__
    details: dict[str, Any]
    if isinstance(error, PapermillExecutionError):
        ename, evalue = str(error.ename), str(error.evalue)
        details = {
            "kind": "cell",
            "cell_index": error.cell_index,
            "exec_count": error.exec_count,
            "source": error.source,
            "traceback": strip_ansi("\n".join(error.traceback)),
        }
        index = _failing_index(cells, error.cell_index, error.source) if cells else None
        if index is not None and ename == "CellExecutionError" and not evalue.strip():
            found = _cause_from_output(cells[index])  # type: ignore[index]
            if found:
                ename, evalue, details["traceback"] = found
            else:
                evalue = "the cell failed without an error message; see its output"
    else:
        kind = "engine"
        if name == "DeadKernelError":
            kind = "dead_kernel"
        elif name in {"CellTimeoutError", "TimeoutError"}:
            kind = "cell_timeout"
        ename, evalue = name, str(error)
        details = {
            "kind": kind,
            "traceback": strip_ansi("".join(traceback_module.format_exception(error))),
        }
        index = _running_index(cells) if cells and kind != "engine" else None
        if index is not None:
            details["source"] = _text(cells[index].get("source"))  # type: ignore[index]
        if name == "NoSuchKernel":
            evalue, details["fix"] = _no_such_kernel(error)
        elif isinstance(error, NotifierError):
            evalue, details["fix"] = error.message, error.fix
    details["ename"] = ename
    details["evalue"] = clean_evalue(ename, evalue)
    number = cell_number(cells, index) if cells is not None and index is not None else None
    if number is not None:
        details["cell_number"] = number
    details["summary"] = error_summary(details, cell_timeout)
    return details


def _no_such_kernel(error: BaseException) -> tuple[str, str]:
    """The message and fix for a kernel name that is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager

    wanted = getattr(error, "name", None) or str(error).rsplit(" ", 1)[-1]
    try:
        installed = ", ".join(sorted(KernelSpecManager().find_kernel_specs())) or "none"
    except Exception:  # listing is only a hint
        installed = "unknown"
    return (
        f"No Jupyter kernel named {wanted!r} is installed here (installed: {installed})",
        "name an installed kernel (kernel: in jobs.yaml, or --kernel), or install that kernel "
        "in the environment that runs notifier",
    )


def error_summary(error: dict[str, Any], cell_timeout: float | None = None) -> str:
    """One line for the CLI, the ledger and the failure email's subject.

    ``cell 2 raised ValueError: boom``; ``cell 3 raised AssertionError`` (no message, no
    colon); ``cell 4 exceeded the cell timeout (30 s)``; ``the kernel died while running
    cell 2``. Without a known cell the sentence names no number.
    """
    kind = error.get("kind")
    ename = str(error.get("ename") or "an error")
    lines = str(error.get("evalue") or "").strip().splitlines()
    first = lines[0].strip() if lines else ""
    number = error.get("cell_number")
    cell = f"cell {number}" if number is not None else "a cell"
    if kind == "cell":
        return f"{cell} raised {ename}: {first}" if first else f"{cell} raised {ename}"
    if kind == "cell_timeout":
        limit = f" ({cell_timeout:g} s)" if cell_timeout else ""
        return f"{cell} exceeded the cell timeout{limit}"
    if kind == "dead_kernel":
        where = f" while running cell {number}" if number is not None else ""
        return f"the kernel died{where}" + (
            f": {first}" if first and first != "Kernel died" else ""
        )
    if error.get("fix") and first:  # a cause we named ourselves: the sentence says it all
        return first
    return f"{ename}: {first}" if first else ename
