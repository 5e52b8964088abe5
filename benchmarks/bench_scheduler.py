"""Scheduler figures: loading 1,000 jobs, idle cost of 100 jobs, start lateness in a burst.

    python benchmarks/bench_scheduler.py

1. validate-and-load of a jobs.yaml with 1,000 jobs (median of 5);
2. `notifier schedule` with 100 jobs due far in the future: resident memory and
   CPU use over 20 s of idling (no busy polling);
3. 20 jobs due at the same second: how late each run starts against its slot
   (ledger started_at - slot), median and worst, with 20 and with 4 workers.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from notifier.jobs import load_jobs  # noqa: E402
from notifier.ledger import Ledger  # noqa: E402

TINY_NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "source": "x = 1",
            "outputs": [],
            "execution_count": None,
        },
        {
            "cell_type": "code",
            "metadata": {},
            "source": "y = x + 1",
            "outputs": [],
            "execution_count": None,
        },
    ],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


def write_project(folder: Path, jobs: list[str]) -> Path:
    (folder / "nb.ipynb").write_text(json.dumps(TINY_NOTEBOOK))
    path = folder / "jobs.yaml"
    path.write_text("defaults:\n  timezone: UTC\njobs:\n" + "".join(jobs))
    return path


def job(name: str, schedule: str) -> str:
    return f"  - name: {name}\n    notebook: nb.ipynb\n    schedule: {schedule}\n    to: ops@example.com\n"


def bench_load(folder: Path) -> None:
    shapes = ['"*/5 * * * *"', '"0 8 * * 1-5"', "{every: 15m}", '"30 2 * * sun"', '"@daily"']
    path = write_project(folder, [job(f"job-{i}", shapes[i % len(shapes)]) for i in range(1000)])
    times = []
    for _ in range(5):
        started = time.perf_counter()
        loaded = load_jobs(path)
        times.append(time.perf_counter() - started)
    assert len(loaded.jobs) == 1000
    print(
        f"load + validate 1,000 jobs: median {statistics.median(times) * 1000:.0f} ms "
        f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times)} ms)"
    )


def daemon_env(folder: Path, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_")}
    env.update(
        {
            "NOTIFIER_DB_URL": f"sqlite:///{folder / 'ledger.db'}",
            "NOTIFIER_RUNS_DIR": str(folder / "runs"),
            "NOTIFIER_OUTBOX": str(folder / "outbox"),
            "NOTIFIER_WORKERS": str(workers),
            "NOTIFIER_SHUTDOWN_GRACE": "60",
        }
    )
    return env


def start_daemon(folder: Path, jobs_path: Path, workers: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "notifier", "schedule", str(jobs_path)],
        cwd=folder,
        env=daemon_env(folder, workers),
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "daemon.log", "wb"),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_idle(folder: Path) -> None:
    jobs_path = write_project(folder, [job(f"idle-{i}", f'"{i % 60} 3 * * *"') for i in range(100)])
    proc = start_daemon(folder, jobs_path, workers=4)
    try:
        time.sleep(6)  # imports and start-up
        ps = psutil.Process(proc.pid)
        before = ps.cpu_times()
        started = time.monotonic()
        time.sleep(20)
        after = ps.cpu_times()
        wall = time.monotonic() - started
        cpu = (after.user + after.system) - (before.user + before.system)
        rss = ps.memory_info().rss / 1e6
        threads = ps.num_threads()
    finally:
        stop(proc)
    print(
        f"idle daemon with 100 jobs: RSS {rss:.0f} MB, CPU {cpu * 1000:.0f} ms over {wall:.0f} s "
        f"({100 * cpu / wall:.2f} % of one core), {threads} threads"
    )


def bench_burst(folder: Path, workers: int) -> None:
    due = (datetime.now(timezone.utc) + timedelta(seconds=12)).replace(microsecond=0)
    at = due.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    jobs_path = write_project(folder, [job(f"burst-{i}", f'{{at: "{at}"}}') for i in range(20)])
    proc = start_daemon(folder, jobs_path, workers=workers)
    ledger = None
    try:
        deadline = time.monotonic() + 240
        ledger = Ledger(daemon_env(folder, workers)["NOTIFIER_DB_URL"])
        while time.monotonic() < deadline:
            runs = ledger.history(limit=100)
            if len(runs) == 20 and all(r.status not in {"claimed", "running"} for r in runs):
                break
            time.sleep(1)
        runs = ledger.history(limit=100)
    finally:
        stop(proc)
        if ledger:
            ledger.close()
    late = sorted((r.started_at - r.slot).total_seconds() for r in runs if r.started_at)
    statuses = {r.status for r in runs}
    print(
        f"burst of 20 jobs due at one second, {workers} workers: start lateness median "
        f"{statistics.median(late) * 1000:.0f} ms, worst {late[-1] * 1000:.0f} ms "
        f"({len(late)} runs, statuses {sorted(statuses)})"
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name in ("load", "idle", "burst20", "burst4"):
            (base / name).mkdir()
        bench_load(base / "load")
        bench_idle(base / "idle")
        bench_burst(base / "burst20", workers=20)
        bench_burst(base / "burst4", workers=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
