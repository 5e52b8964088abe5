"""Warm starts in real ``notifier schedule`` processes: slots run on workers prepared before
them, one kernel per run, and a prepared worker left waiting never outlives its slot,
its job, or its daemon (a reload, SIGTERM, kill -9)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
from conftest import wait_until
from daemons import Project, sigkill
from smtp_server import SMTPTestServer

from notebooks import write_notebook

UTC = timezone.utc
pytestmark = pytest.mark.slow

STATE = """\
import os
from notifier import report

try:
    seen = carried  # set by an earlier run, if its kernel were used again
except NameError:
    seen = "nothing"
carried = run_id
report.email(f"{seen} {scheduled_for}", to="ops@example.com").text(os.getcwd())
"""


@pytest.fixture
def project(
    tmp_path: Path, smtp_server_factory: Callable[..., SMTPTestServer]
) -> Iterator[Project]:
    p = Project(tmp_path, smtp_server_factory("plain"))
    write_notebook(p.root / "state.ipynb", STATE, parameters='run_id = ""\nscheduled_for = ""')
    try:
        yield p
    finally:
        p.cleanup()


def jobs(schedule: str, name: str = "warm") -> str:
    return f"""\
defaults:
  timezone: UTC
jobs:
  - name: {name}
    notebook: state.ipynb
    schedule: {schedule}
    to: ops@example.com
"""


def kernels(project: Project) -> list[psutil.Process]:
    return [p for p in project.tagged_processes() if "ipykernel" in " ".join(p.cmdline())]


def prepared(project: Project) -> list[psutil.Process]:
    """Prepared kernels waiting for their run, and their workers."""
    found = []
    for kernel in kernels(project):
        try:
            if kernel.environ().get("NOTIFIER_PREPARED_FOLDER"):
                found += [kernel, kernel.parent()]
        except psutil.Error:
            continue
    return found


def at(seconds: float) -> str:
    slot = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)
    return f'{{at: "{slot.isoformat()}"}}'


def test_scheduled_slots_run_warm_each_on_a_kernel_of_its_own(project: Project) -> None:
    project.write_jobs(jobs("{every: 4s}"))
    daemon = project.start(NOTIFIER_WARM_LEAD="3s")
    wait_until(lambda: len(project.received()) >= 3, 90, "three runs")
    assert daemon.terminate() == 0

    runs = [r for r in project.runs("warm") if r.status == "succeeded"]
    specs = [json.loads((Path(r.output_path).parent / "spec.json").read_text()) for r in runs]
    assert sum(spec["warm"] for spec in specs) >= 2  # the first slot may come before any
    assert all(subject.startswith("nothing ") for _, subject in project.received())
    assert not list((project.root / "runs" / ".warm").iterdir())  # nothing left behind
    assert "Traceback" not in daemon.stderr()


def test_a_reload_that_removes_the_job_shuts_its_prepared_kernel_down(project: Project) -> None:
    project.write_jobs(jobs(at(40)))
    daemon = project.start(NOTIFIER_WARM_LEAD="60s")
    wait_until(lambda: prepared(project) and kernels(project), 60, "a prepared worker")
    project.write_jobs(jobs('"0 3 1 1 *"', name="other"))
    daemon.wait_for_log("other: added")
    wait_until(lambda: not prepared(project) and not kernels(project), 30, "them to stop")
    assert daemon.proc.poll() is None
    assert daemon.terminate() == 0
    assert project.runs("warm") == [] and project.received() == []


def test_sigterm_shuts_down_a_waiting_prepared_kernel(project: Project) -> None:
    project.write_jobs(jobs(at(40)))
    daemon = project.start(NOTIFIER_WARM_LEAD="60s")
    wait_until(lambda: prepared(project) and kernels(project), 60, "a prepared worker")
    assert daemon.terminate() == 0
    assert project.tagged_processes() == []
    assert not list((project.root / "runs" / ".warm").iterdir())


def test_kill_9_of_the_daemon_leaves_no_prepared_worker_or_kernel(project: Project) -> None:
    project.write_jobs(jobs(at(40)))
    daemon = project.start(NOTIFIER_WARM_LEAD="60s")
    wait_until(lambda: prepared(project) and kernels(project), 60, "a prepared worker")
    wait_until(lambda: list((project.root / "runs" / ".warm").glob("*/ready")), 60, "its kernel")
    sigkill(daemon)
    wait_until(lambda: not project.tagged_processes(), 20, "the worker and kernel to exit")
