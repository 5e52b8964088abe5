"""Scheduler figures: loading 1,000 jobs, idle cost of 100 jobs, start lateness in a burst.

    python benchmarks/bench_scheduler.py

1. validate-and-load of a jobs.yaml with 1,000 jobs (median of 5);
2. `notifier schedule` with 100 jobs due far in the future: resident memory and
   CPU use over 20 s of idling (no busy polling);
3. 20 jobs due at the same second: how late each run starts against its slot
   (ledger started_at - slot) and how late its notebook's first cell starts (papermill's
   cell start time - slot), median and worst: with 20 workers, and with the default 4
   workers cold (NOTIFIER_WARM_LEAD=0, before warm starts), warm (the default lead), and
   warm with NOTIFIER_WARM_FORK_SERVER=0 (each prepared worker imports papermill itself).

    python benchmarks/bench_scheduler.py [--only burst]
"""

from __future__ import annotations

import argparse
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


def daemon_env(
    folder: Path, workers: int, warm_lead: str | None = None, fork_server: bool = True
) -> dict[str, str]:
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
    env.pop("NOTIFIER_WARM_LEAD", None)
    if warm_lead is not None:
        env["NOTIFIER_WARM_LEAD"] = warm_lead
    env["NOTIFIER_WARM_FORK_SERVER"] = "1" if fork_server else "0"
    return env


def start_daemon(
    folder: Path,
    jobs_path: Path,
    workers: int,
    warm_lead: str | None = None,
    fork_server: bool = True,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "notifier", "-v", "schedule", str(jobs_path), "--no-web"],
        cwd=folder,
        env=daemon_env(folder, workers, warm_lead, fork_server),
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


def first_cell_start(output: str | None) -> datetime | None:
    """When the notebook's first code cell started (papermill's metadata), or None."""
    if not output or not Path(output).is_file():
        return None
    cells = json.loads(Path(output).read_text(encoding="utf-8"))["cells"]
    first = next(c for c in cells if c["cell_type"] == "code")
    started = first["metadata"].get("papermill", {}).get("start_time")
    return datetime.fromisoformat(started) if started else None


def bench_burst(
    folder: Path, workers: int, warm_lead: str | None, label: str, fork_server: bool = True
) -> dict:
    due = (datetime.now(timezone.utc) + timedelta(seconds=12)).replace(microsecond=0)
    at = due.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    jobs_path = write_project(folder, [job(f"burst-{i}", f'{{at: "{at}"}}') for i in range(20)])
    proc = start_daemon(folder, jobs_path, workers, warm_lead, fork_server)
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
    cells = sorted(
        (started - r.slot).total_seconds()
        for r in runs
        if (started := first_cell_start(r.output_path)) is not None
    )
    warm = sum(
        json.loads((Path(r.output_path).parent / "spec.json").read_text()).get("warm", False)
        for r in runs
        if r.output_path
    )
    statuses = {r.status for r in runs}
    figures = {
        "start_median": statistics.median(late),
        "start_worst": late[-1],
        "cell_median": statistics.median(cells),
        "cell_worst": cells[-1],
    }
    print(
        f"burst of 20 jobs due at one second, {label}: run start lateness median "
        f"{figures['start_median'] * 1000:.0f} ms, worst {figures['start_worst'] * 1000:.0f} ms; "
        f"first cell median {figures['cell_median'] * 1000:.0f} ms, worst "
        f"{figures['cell_worst'] * 1000:.0f} ms ({len(late)} runs, {warm} on prepared workers, "
        f"statuses {sorted(statuses)})",
        flush=True,
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["burst"], help="only the burst benchmarks")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name in ("load", "idle", "burst20", "burst4-cold", "burst4-warm", "burst4-nofork"):
            (base / name).mkdir()
        if not args.only:
            bench_load(base / "load")
            bench_idle(base / "idle")
            bench_burst(base / "burst20", 20, "0", "20 workers, cold")
        cold = bench_burst(base / "burst4-cold", 4, "0", "default 4 workers, cold (before)")
        warm = bench_burst(base / "burst4-warm", 4, None, "default 4 workers, warm (after)")
        bench_burst(
            base / "burst4-nofork",
            4,
            None,
            "default 4 workers, warm without the fork server",
            fork_server=False,
        )
    for key, what in (("start", "run start"), ("cell", "first cell")):
        print(
            f"warm vs cold, {what} lateness: median {warm[key + '_median'] / cold[key + '_median']:.2f}x, "
            f"worst {warm[key + '_worst'] / cold[key + '_worst']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
