"""Live progress: the worker writes progress.json as each code cell starts, and execute()
passes it to its callback while it waits (the run path stores it for the dashboard)."""

from __future__ import annotations

from pathlib import Path

from notebooks import write_notebook
from notifier.notebook.execute import RunRequest, execute
from notifier.settings import Settings


def test_execute_reports_each_code_cell_as_it_starts(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "slow.ipynb",
        "import time\ntime.sleep(0.8)",
        "time.sleep(0.8)",
        "time.sleep(0.8)",
        parameters="pause = 1",
        markdown="# not a code cell",
    )
    seen: list[dict] = []
    settings = Settings(runs_dir=tmp_path / "runs", outbox_dir=tmp_path / "outbox")
    execution = execute(
        RunRequest(notebook, {"pause": 2}, job_name="slow", timeout=120),
        settings,
        progress=seen.append,
    )
    assert execution.status == "succeeded", execution.error
    # 4 code cells as the user counts them: the injected parameters cell does not count
    assert {record["cells"] for record in seen} == {4}
    cells = [record["cell"] for record in seen]
    assert cells == sorted(cells) and cells[-1] == 4
    assert {2, 3} <= set(cells)  # seen while it ran, not only at the end
    assert all(record["started_at"] for record in seen)
    assert (execution.run_dir / "progress.json").is_file()
