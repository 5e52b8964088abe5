"""notifier.notebook.worker with real kernels: the error record, the kernel it picks, hide_code.

Each case is one ``python -m notifier.notebook.worker spec.json`` run with a spec written here,
as the runner writes it; the runs of a module start together to save time.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nbformat
import pytest

from notebooks import WorkerRun, run_worker, write_notebook
from notifier.notebook.archive import render_html

RUN_METADATA = {"run_id": "worker-test", "job_name": "test"}

# name -> (code cells, notebook options, spec keys); parameters is "limit = 1" unless given
CASES: dict[str, tuple[list[str], dict[str, Any], dict[str, Any]]] = {
    "after-markdown": (["x = 1", "raise ValueError('boom')"], {"markdown": "# Title"}, {}),
    "first-cell-no-parameters": (["1 / 0"], {"parameters": None}, {}),
    "unknown-magic": (["x = 1", "%undefined-line-magic"], {}, {}),
    "no-message": (["assert False"], {}, {}),
    "syntax": (["x = = 1"], {}, {}),
    "dead-kernel": (["x = 1", "import os\nos._exit(1)"], {}, {}),
    "no-kernelspec": (["import sys\nprint('ran on', sys.version_info[0])"], {"bare": True}, {}),
    "no-kernelspec-named": (["x = 1"], {"bare": True}, {"kernel_name": "python3"}),
    "unknown-kernel": (["x = 1"], {}, {"kernel_name": "no-such-kernel"}),
    "r-without-kernelspec": (["x <- 1"], {"bare": True, "language": "R"}, {}),
    "hide-code": (
        [
            "from notifier import report\nSECRET_SOURCE_LINE = 41 + 1\nprint('printed', SECRET_SOURCE_LINE)",
            "mail = report.email('Shown without code', to='a@example.com')\nmail.text('body')",
        ],
        {"markdown": "# Report heading"},
        {"hide_code": True},
    ),
}


def _run(base: Path, name: str) -> WorkerRun:
    cells, options, spec = CASES[name]
    folder = base / name
    notebook = write_notebook(
        folder / "notebook.ipynb",
        *cells,
        parameters=options.get("parameters", "limit = 1"),
        markdown=options.get("markdown"),
    )
    if options.get("bare"):  # as VS Code saves a new notebook: no kernelspec
        data = nbformat.read(notebook, as_version=4)
        del data.metadata["kernelspec"]
        if "language" in options:
            data.metadata["language_info"] = {"name": options["language"]}
        else:
            del data.metadata["language_info"]
        nbformat.write(data, str(notebook))
    return run_worker(folder, notebook, dict(RUN_METADATA), **spec)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, WorkerRun]:
    base = tmp_path_factory.mktemp("worker")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run, base, name) for name in CASES}
    return {name: future.result() for name, future in futures.items()}


# -- the cell, as the user sees their notebook ---------------------------------------------------


def test_cell_number_counts_the_users_code_cells(runs):
    error = runs["after-markdown"].error
    # code cells: parameters (1), x = 1 (2), the raise (3); not papermill's injected cell
    assert error["cell_number"] == 3
    assert error["exec_count"] == 4  # what papermill counts, kept for the archive's In [4]
    assert error["source"] == "raise ValueError('boom')"
    assert error["summary"] == "cell 3 raised ValueError: boom"


def test_an_error_in_the_first_code_cell_is_cell_1(runs):
    # without a parameters cell papermill injects its cell first; it does not count
    error = runs["first-cell-no-parameters"].error
    assert (error["cell_number"], error["ename"]) == (1, "ZeroDivisionError")
    assert error["summary"] == "cell 1 raised ZeroDivisionError: division by zero"


def test_a_dead_kernel_names_the_cell_it_was_running(runs):
    error = runs["dead-kernel"].error
    assert (error["kind"], error["cell_number"]) == ("dead_kernel", 3)
    assert error["source"] == "import os\nos._exit(1)"
    assert error["summary"] == "the kernel died while running cell 3"


def test_a_cell_timeout_names_the_cell(tmp_path):
    notebook = write_notebook(tmp_path / "slow.ipynb", "x = 1", "import time\ntime.sleep(60)")
    error = run_worker(tmp_path, notebook, dict(RUN_METADATA), cell_timeout=2).error
    assert (error["kind"], error["cell_number"]) == ("cell_timeout", 3)
    assert error["source"] == "import time\ntime.sleep(60)"
    assert error["summary"] == "cell 3 exceeded the cell timeout (2 s)"


# -- messages that say what happened --------------------------------------------------------------


def test_an_unknown_magic_names_the_usage_error(runs):
    error = runs["unknown-magic"].error
    assert error["ename"] == "UsageError"
    assert error["evalue"] == "Line magic function `%undefined-line-magic` not found."
    assert error["summary"] == (
        "cell 3 raised UsageError: Line magic function `%undefined-line-magic` not found."
    )
    assert "UsageError" in error["traceback"]


def test_an_exception_without_a_message_has_no_trailing_colon(runs):
    error = runs["no-message"].error
    assert (error["ename"], error["evalue"]) == ("AssertionError", "")
    assert error["summary"] == "cell 2 raised AssertionError"


def test_a_syntax_error_names_the_line_not_the_kernels_file(runs):
    error = runs["syntax"].error
    assert error["ename"] == "SyntaxError"
    assert error["evalue"] == "invalid syntax (line 1)"
    assert ".py" not in error["summary"]


# -- which kernel ----------------------------------------------------------------------------------


def test_a_notebook_without_kernelspec_runs_with_this_environments_python(runs):
    run = runs["no-kernelspec"]
    assert run.result["status"] == "ok", run.result
    [warning] = run.result["warnings"]
    assert warning.startswith("notebook.ipynb names no kernel (its metadata has no kernelspec")
    assert "ran it with 'python3', this environment's Python" in warning
    assert "kernel: in jobs.yaml" in warning
    assert warning in run.log  # worker.log says it too, once
    output = json.loads(run.output.read_text())
    printed = [o.get("text") for c in output["cells"] for o in c.get("outputs", [])]
    assert any("ran on 3" in "".join(text or []) for text in printed)


def test_the_specs_kernel_name_wins_and_needs_no_warning(runs):
    run = runs["no-kernelspec-named"]
    assert run.result["status"] == "ok", run.result
    assert "warnings" not in run.result


def test_an_unknown_kernel_is_one_clear_error(runs):
    error = runs["unknown-kernel"].error
    assert error["ename"] == "NoSuchKernel"
    assert error["summary"] == (
        "No Jupyter kernel named 'no-such-kernel' is installed here (installed: python3)"
    )
    assert "kernel: in jobs.yaml" in error["fix"]


def test_a_notebook_in_another_language_without_kernelspec_is_refused(runs):
    error = runs["r-without-kernelspec"].error
    assert error["summary"] == "notebook.ipynb names no kernel, and it is written in R, not Python."
    assert "kernel: in jobs.yaml" in error["fix"]


# -- hide_code ---------------------------------------------------------------------------------------


def test_hide_code_leaves_the_code_out_of_the_archived_html(runs, tmp_path):
    run = runs["hide-code"]
    assert run.result["status"] == "ok", run.result
    hidden = run.html.read_text(encoding="utf-8")
    assert "Report heading" in hidden  # markdown stays
    assert "printed 42" in hidden  # outputs stay
    assert "Shown without code" in hidden  # the email's preview is an output
    assert "SECRET_SOURCE_LINE" not in hidden
    assert "report.email" not in hidden
    assert 'class="jp-InputPrompt' not in hidden and "In&nbsp;[" not in hidden
    shown = render_html(run.output, tmp_path / "with-code.html").read_text(encoding="utf-8")
    assert "SECRET_SOURCE_LINE" in shown  # the default keeps the code
