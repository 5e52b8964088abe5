"""Warm starts with real workers and kernels: a worker prepared before its slot takes its
run as a cold worker would (same environment, sandbox, timeout, output), serves exactly
one run, and one nobody takes is shut down (notifier.notebook.prepared, .warm)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
from conftest import wait_until

from notebooks import write_notebook
from notifier.notebook.execute import RunRequest, execute
from notifier.notebook.forkserver import ForkedProcess, ForkServer
from notifier.notebook.prepared import PreparedWorker, start_prepared, worker_environment
from notifier.notebook.warm import Coming, WarmPool
from notifier.runs.path import adhoc_job
from notifier.settings import parse_settings

UTC = timezone.utc
SLOT = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def settings_in(folder: Path, **extra: str):
    return parse_settings(
        {"NOTIFIER_RUNS_DIR": str(folder / "runs"), "NOTIFIER_OUTBOX": str(folder / "outbox")}
        | extra
    )


def gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Workers(list):
    """Prepared workers a test starts, and the fork server that forks them (or None)."""

    server: ForkServer | None = None


@pytest.fixture(params=["started", "forked"])
def workers(request, tmp_path) -> Iterator[Workers]:
    """Prepared workers a test starts (``python -m notifier.notebook.worker --prepare``,
    or forked by a fork server: every test holds for both); killed at the end."""
    started = Workers()
    if request.param == "forked":
        scratch = tmp_path / "fork-server"
        scratch.mkdir()
        started.server = ForkServer(worker_environment(scratch))
        started.server.start()
    yield started
    for worker in started:
        if worker.alive:
            worker.kill()
    if started.server is not None:
        started.server.stop()


def prepare(settings, notebook: Path, workers: Workers, **options) -> PreparedWorker:
    worker = start_prepared(
        settings,
        job_name=options.pop("job_name", "job"),
        slot=SLOT,
        notebook=notebook,
        server=workers.server,
        **options,
    )
    if workers.server is not None:
        assert isinstance(worker.proc, ForkedProcess)  # not started the ordinary way
    workers.append(worker)
    wait_until(lambda: worker.ready or not worker.alive, 90, "the prepared kernel")
    return worker


REPORT = """
import os, tempfile
from pathlib import Path
from notifier import report

Path("attached.txt").write_text("attached bytes")
mail = report.email(f"run {os.environ['NOTIFIER_RUN_ID']} limit {limit}")
mail.text("temp files go to " + tempfile.gettempdir())
mail.attach("attached.txt")
"""


def test_a_prepared_worker_takes_its_run_as_a_cold_worker_would(tmp_path, workers):
    settings = settings_in(tmp_path)
    notebook = write_notebook(tmp_path / "report.ipynb", REPORT, parameters="limit = 1")
    worker = prepare(settings, notebook, workers)
    kernel = worker.kernel_pid
    assert worker.alive and kernel is not None and not gone(kernel)

    request = RunRequest(notebook, {"limit": 7}, job_name="job", to=["boss@example.com"])
    execution = execute(request, settings, prepared=worker)

    assert execution.status == "succeeded", execution.error
    [mail] = execution.emails
    assert mail.subject == f"run {execution.run_id} limit 7"  # the run's id, in the kernel
    assert mail.to == ["boss@example.com"]
    assert [a.data for a in mail.attachments] == [b"attached bytes"]  # via the parts folder
    # the preview in the archive shows the run's default recipients: set before cell 1
    assert "boss@example.com" in execution.output_html.read_text()
    spec = json.loads((execution.run_dir / "spec.json").read_text())
    assert spec["warm"] is True
    # setting up the kernel for the run left no trace in the notebook
    cells = json.loads(execution.output_notebook.read_text())["cells"]
    assert [c["execution_count"] for c in cells if c["cell_type"] == "code"] == [1, 2, 3]
    assert "waited" in execution.timings  # it really was the prepared one
    assert "prepared in" in (execution.run_dir / "worker.log").read_text()
    # used once: the worker and its kernel are gone, and so is its folder
    assert not worker.alive and gone(kernel)
    assert not worker.folder.exists()


STATE = """
import json
from notifier import report

try:
    seen = carried  # a variable of an earlier run, if the kernel were reused
except NameError:
    seen = "nothing"
carried = run_id
module_state = getattr(json, "notifier_test_state", "nothing")
json.notifier_test_state = run_id  # state in an imported module
report.email(f"{seen} | {module_state}", to="a@example.com").text("x")
"""


def test_two_warm_runs_of_a_job_share_no_state(tmp_path, workers):
    settings = settings_in(tmp_path)
    notebook = write_notebook(tmp_path / "state.ipynb", STATE)
    subjects, kernels = [], []
    for _ in range(2):
        worker = prepare(settings, notebook, workers)
        kernels.append(worker.kernel_pid)
        execution = execute(RunRequest(notebook, job_name="job"), settings, prepared=worker)
        assert execution.status == "succeeded", execution.error
        subjects += [m.subject for m in execution.emails]
    assert subjects == ["nothing | nothing", "nothing | nothing"]
    assert kernels[0] != kernels[1] and all(gone(pid) for pid in kernels)


def test_the_kernel_of_a_prepared_worker_cannot_read_the_projects_env(tmp_path, workers):
    from notifier.notebook.sandbox import landlock_abi

    if landlock_abi() < 1:
        if os.environ.get("CI") == "true":
            pytest.fail("Linux Landlock is needed for this test in CI")
        pytest.skip("this kernel has no Landlock: notebooks can read .env here (documented)")
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / ".env").write_text("SMTP_PASSWORD=hunter2-Sup3r-s3cret\n")
    notebook = write_notebook(
        project / "notebooks" / "snoop.ipynb",
        """
        from pathlib import Path
        from notifier import report
        try:
            found = Path("../.env").read_text()
        except OSError as error:
            found = type(error).__name__
        report.email("snoop", to="a@example.com").text(found)
        """,
    )
    settings = settings_in(project)
    worker = prepare(settings, notebook, workers)
    execution = execute(RunRequest(notebook), settings, prepared=worker)
    assert execution.status == "succeeded", execution.error
    assert execution.emails[0].html == "<p>PermissionError</p>"
    assert json.loads((execution.run_dir / "spec.json").read_text())["warm"] is True


def test_a_file_replaced_next_to_the_env_after_preparing_makes_the_run_start_cold(
    tmp_path, workers
):
    # the sandbox grants files next to .env one by one, as they were when it was made: a
    # nightly export that replaces data.csv (atomic rename) after the worker was prepared
    # would be unreadable warm, so the run starts cold and reads it as a cold run would
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text("SMTP_PASSWORD=hunter2-Sup3r-s3cret\n")
    (project / "data.csv").write_text("old\n")
    notebook = write_notebook(
        project / "read.ipynb",
        """
        from notifier import report
        report.email("data", to="a@example.com").text(open("data.csv").read().strip())
        """,
    )
    settings = settings_in(project)
    worker = prepare(settings, notebook, workers)
    (project / "data.tmp").write_text("new\n")
    os.replace(project / "data.tmp", project / "data.csv")
    execution = execute(RunRequest(notebook), settings, prepared=worker)
    assert execution.status == "succeeded", execution.error
    assert execution.emails[0].html == "<p>new</p>"
    assert json.loads((execution.run_dir / "spec.json").read_text())["warm"] is False
    assert not worker.alive


def test_the_wall_clock_timeout_kills_a_prepared_worker_and_its_kernel(tmp_path, workers):
    settings = settings_in(tmp_path)
    notebook = write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(120)")
    worker = prepare(settings, notebook, workers)
    kernel = worker.kernel_pid
    execution = execute(RunRequest(notebook, timeout=3), settings, prepared=worker)
    assert execution.status == "failed"
    assert execution.error == "timed out after 3s; the kernel was killed"
    assert gone(worker.pid) and gone(kernel)


def test_a_worker_that_could_not_prepare_leaves_the_run_to_a_cold_start(tmp_path, workers):
    settings = settings_in(tmp_path)
    notebook = write_notebook(tmp_path / "nb.ipynb", "x = 1")
    worker = prepare(settings, notebook, workers, kernel_name="no-such-kernel")
    assert not worker.alive and worker.proc.returncode == 3
    execution = execute(
        RunRequest(notebook, kernel_name="no-such-kernel"), settings, prepared=worker
    )
    # reported exactly as a cold run reports it
    assert execution.status == "failed"
    assert execution.failure is not None and execution.failure["ename"] == "NoSuchKernel"
    assert "could not prepare" in (execution.run_dir / "worker.log").read_text()


def test_a_prepared_worker_that_does_not_fit_is_shut_down_and_the_run_starts_cold(
    tmp_path, workers
):
    settings = settings_in(tmp_path)
    first = write_notebook(tmp_path / "first.ipynb", "x = 1")
    second = write_notebook(tmp_path / "second.ipynb", "y = 2")
    worker = prepare(settings, first, workers)
    kernel = worker.kernel_pid
    execution = execute(RunRequest(second), settings, prepared=worker)
    assert execution.status == "succeeded", execution.error
    assert json.loads((execution.run_dir / "spec.json").read_text())["warm"] is False
    assert worker.proc.returncode == 0 and gone(kernel)  # cancelled, and it stopped cleanly


# -- the pool ------------------------------------------------------------------------------


class Slots:
    """What the daemon would tell the pool is coming; tests change it."""

    def __init__(self) -> None:
        self.coming: list[Coming] = []
        self.lock = threading.Lock()

    def __call__(self, lead: float) -> tuple[list[Coming], datetime | None]:
        with self.lock:
            return list(self.coming), None

    def set(self, *coming: Coming) -> None:
        with self.lock:
            self.coming = list(coming)


@pytest.fixture
def pool_for(tmp_path) -> Iterator:
    pools: list[WarmPool] = []

    def make(limit: int) -> tuple[WarmPool, Slots]:
        slots = Slots()
        pool = WarmPool(settings_in(tmp_path), slots, lead=5, limit=limit)
        pools.append(pool)
        pool.start()
        return pool, slots

    yield make
    for pool in pools:
        pool.close(timeout=20)


def test_a_prepared_kernel_nobody_takes_is_shut_down(tmp_path, pool_for):
    notebook = write_notebook(tmp_path / "nb.ipynb", "x = 1")
    job = adhoc_job(notebook, name="alert")
    slot = datetime.now(UTC) + timedelta(seconds=5)
    pool, slots = pool_for(limit=2)
    slots.set(Coming(job, slot))
    pool.wake()
    [worker] = wait_until(pool.waiting, 30, "a prepared worker")
    wait_until(lambda: worker.ready, 90, "its kernel")
    kernel = worker.kernel_pid
    assert not gone(kernel)

    slots.set()  # the slot was cancelled (job removed, disabled, changed or run elsewhere)
    pool.wake()
    wait_until(lambda: not worker.alive and gone(kernel), 30, "the worker and kernel to stop")
    assert worker.proc.returncode == 0  # it shut its kernel down itself: not killed
    wait_until(lambda: not worker.folder.exists(), 10, "its folder to go")
    assert pool.waiting() == []


def test_the_pool_prepares_at_most_limit_earliest_first_and_the_next_after_a_take(
    tmp_path, pool_for
):
    notebook = write_notebook(tmp_path / "nb.ipynb", "x = 1")
    now = datetime.now(UTC)
    jobs = [adhoc_job(notebook, name=f"job-{i}") for i in range(3)]
    coming = [Coming(job, now + timedelta(seconds=2 + i)) for i, job in enumerate(jobs)]
    pool, slots = pool_for(limit=2)
    slots.set(*coming)
    pool.wake()
    waiting = wait_until(lambda: len(pool.waiting()) == 2 and pool.waiting(), 30, "two workers")
    assert sorted(w.job_name for w in waiting) == ["job-0", "job-1"]  # job-2: over the limit

    taken = pool.take(jobs[0], coming[0].slot)
    assert taken is not None and taken in waiting
    wait_until(
        lambda: sorted(w.job_name for w in pool.waiting()) == ["job-1", "job-2"],
        30,
        "the next slot's worker",
    )
    taken.discard()
    # a job changed on reload does not take the worker prepared for its old self
    changed = adhoc_job(notebook, name="job-1", kernel="python3")
    leftover = next(w for w in pool.waiting() if w.job_name == "job-1")
    other = pool.take(changed, coming[1].slot)
    assert other is not leftover
    if other is not None:  # forked for the job as it is now
        assert other.kernel_name == "python3"
        other.discard()
    wait_until(lambda: not leftover.alive, 30, "the unfit worker to stop")


def test_a_long_overdue_slot_gets_no_prepared_worker(tmp_path, pool_for):
    # a fired slot still waiting for a free worker past stale_after starts cold: preparing
    # one would be cancelled as stale at the next look, and prepared again, endlessly
    notebook = write_notebook(tmp_path / "nb.ipynb", "x = 1")
    job = adhoc_job(notebook, name="late")
    pool, slots = pool_for(limit=2)
    slots.set(Coming(job, datetime.now(UTC) - timedelta(seconds=pool.stale_after + 100)))
    for _ in range(6):
        pool.wake()
        threading.Event().wait(0.5)
    assert pool.prepared_count == 0 and pool.waiting() == []


def test_a_slot_with_no_prepared_worker_gets_one_forked_at_once(tmp_path, pool_for):
    notebook = write_notebook(tmp_path / "nb.ipynb", "x = 1")
    job = adhoc_job(notebook, name="late")
    pool, _slots = pool_for(limit=1)
    wait_until(lambda: pool.server is not None and pool.server.alive, 60, "the fork server")
    worker = pool.take(job, datetime.now(UTC))  # nothing was prepared for it
    assert worker is not None and pool.waiting() == []
    execution = execute(RunRequest(notebook), settings_in(tmp_path), prepared=worker)
    assert execution.status == "succeeded", execution.error
    assert json.loads((execution.run_dir / "spec.json").read_text())["warm"] is True
    assert worker.proc.returncode == 0
