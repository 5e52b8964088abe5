"""The fork server (notifier.notebook.forkserver) with real processes: what happens to the
workers and kernels it forked when it dies, and what notebook code cannot do to it. That a
forked worker runs exactly as one started with --prepare: tests/notebook/test_warm.py,
whose worker tests run both ways."""

from __future__ import annotations

import os
import signal
from datetime import datetime, timezone

import psutil
import pytest
from conftest import wait_until

from notebooks import write_notebook
from notifier.notebook.forkserver import ForkedProcess, ForkServer
from notifier.notebook.prepared import start_prepared, worker_environment
from notifier.settings import parse_settings

SLOT = datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)


def gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def server(tmp_path):
    scratch = tmp_path / "fork-server"
    scratch.mkdir()
    started = ForkServer(worker_environment(scratch))
    started.start()
    yield started
    started.stop()


def forked_worker(tmp_path, server: ForkServer):
    settings = parse_settings(
        {"NOTIFIER_RUNS_DIR": str(tmp_path / "runs"), "NOTIFIER_OUTBOX": str(tmp_path / "out")}
    )
    notebook = write_notebook(tmp_path / "nb.ipynb", "x = 1")
    worker = start_prepared(settings, job_name="job", slot=SLOT, notebook=notebook, server=server)
    assert isinstance(worker.proc, ForkedProcess)
    wait_until(lambda: worker.ready or not worker.alive, 90, "the prepared kernel")
    assert worker.alive and worker.kernel_pid is not None
    return worker


def test_kill_9_of_the_server_ends_its_waiting_workers_and_their_kernels(tmp_path, server):
    worker = forked_worker(tmp_path, server)
    kernel = worker.kernel_pid
    assert server.proc is not None
    assert psutil.Process(worker.pid).ppid() == server.proc.pid  # forked, not started
    os.kill(server.proc.pid, signal.SIGKILL)
    wait_until(lambda: gone(worker.pid) and gone(kernel), 20, "the worker and kernel to exit")
    assert not server.alive
    assert worker.proc.poll() is not None  # its supervisor sees it end (status unknown)


def test_stopping_the_server_ends_its_workers_and_their_kernels(tmp_path, server):
    worker = forked_worker(tmp_path, server)
    kernel = worker.kernel_pid
    server.stop()
    wait_until(lambda: gone(worker.pid) and gone(kernel), 20, "the worker and kernel to exit")


def test_the_server_is_not_dumpable_its_workers_are(tmp_path, server):
    # notebook code runs as the same user: it must not attach to the server (and through it
    # tamper with every later worker); a worker is as dumpable as one started with --prepare
    if os.geteuid() == 0:
        pytest.skip("root may read any process's memory: run the tests as a user to check")
    worker = forked_worker(tmp_path, server)
    assert server.proc is not None
    with pytest.raises(PermissionError):
        open(f"/proc/{server.proc.pid}/mem", "rb").close()
    open(f"/proc/{worker.pid}/mem", "rb").close()
    worker.kill()


def test_a_forked_worker_gives_its_kernel_its_own_environment_not_the_servers(
    tmp_path, server, monkeypatch
):
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")  # the daemon's: for no worker or kernel
    worker = forked_worker(tmp_path, server)
    # /proc/PID/environ of a forked worker is the server's, as at its exec (no secrets there
    # either); its kernel was exec'd with the environment the worker was given
    assert not any(name.startswith("SMTP_") for name in psutil.Process(worker.pid).environ())
    environ = psutil.Process(worker.kernel_pid).environ()
    assert environ["NOTIFIER_PREPARED_FOLDER"] == str(worker.folder)
    assert environ["TMPDIR"] == str(worker.folder / "tmp")  # not the server's scratch folder
    assert not any(name.startswith("SMTP_") for name in environ)
    worker.kill()
