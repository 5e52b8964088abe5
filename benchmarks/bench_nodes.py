"""Several nodes on one PostgreSQL ledger: start lateness of a burst, and claims per second.

    python benchmarks/bench_nodes.py [--quick]

1. 60 jobs due at the same second whose notebooks wait 5 s (a stand-in for a slow
   query), 4 workers per node, with 1, 2 and 3 `notifier schedule` nodes on one
   PostgreSQL ledger, each with its own runs folder: how late each run starts against
   its slot (ledger started_at - slot), median and worst, and how the runs spread over
   the nodes. All nodes run on this one machine, so they also share its cores.
2. Claims per second: processes claiming slots as fast as they can, each claim one
   INSERT on the unique key, on PostgreSQL and on SQLite side by side; with every
   process racing for the same slots (each slot is won once) and with disjoint slots.

PostgreSQL is a throwaway cluster made with the machine's initdb/pg_ctl (as in the tests;
fsync off, synchronous_commit on), or NOTIFIER_TEST_DATABASE_URL.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from postgres import Unavailable, postgres_server  # noqa: E402

from notifier.ledger import Ledger  # noqa: E402

JOBS = 60
WORKERS = 4
SLEEP = 5

SLOW_NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "source": "seconds = 5",
            "outputs": [],
            "execution_count": None,
        },
        {
            "cell_type": "code",
            "metadata": {},
            "source": "import time\ntime.sleep(seconds)  # a slow query",
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


def write_project(folder: Path, due: datetime, jobs: int) -> Path:
    (folder / "slow.ipynb").write_text(json.dumps(SLOW_NOTEBOOK))
    at = due.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    lines = ["defaults:\n  timezone: UTC\n  to: ops@example.com\njobs:\n"]
    for i in range(jobs):
        lines.append(
            f"  - name: burst-{i:02d}\n    notebook: slow.ipynb\n"
            f'    schedule: {{at: "{at}"}}\n    parameters: {{seconds: {SLEEP}}}\n'
        )
    path = folder / "jobs.yaml"
    path.write_text("".join(lines))
    return path


def start_node(folder: Path, jobs_path: Path, url: str, n: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "NOTIFIER_"))}
    env.update(
        {
            "NOTIFIER_DB_URL": url,
            "NOTIFIER_RUNS_DIR": str(folder / f"runs-{n}"),
            "NOTIFIER_OUTBOX": str(folder / "outbox"),
            "NOTIFIER_WORKERS": str(WORKERS),
            "NOTIFIER_SHUTDOWN_GRACE": "60",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "notifier", "schedule", str(jobs_path)],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / f"node-{n}.log", "wb"),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def burst(folder: Path, url: str, nodes: int, jobs: int) -> dict:
    due = (datetime.now(timezone.utc) + timedelta(seconds=10 + 5 * nodes)).replace(microsecond=0)
    jobs_path = write_project(folder, due, jobs)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [start_node(folder, jobs_path, url, n) for n in range(nodes)]
    ledger = Ledger(url)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            runs = ledger.history(limit=None)
            if len(runs) == jobs and all(r.status == "succeeded" for r in runs):
                break
            time.sleep(1)
        runs = ledger.history(limit=None)
    finally:
        for proc in procs:
            stop(proc)
        ledger.db.dispose()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the nodes, workers and kernels
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    late = sorted((r.started_at - r.slot).total_seconds() for r in runs if r.started_at)
    spread = Counter(r.owner for r in runs)
    return {
        "nodes": nodes,
        "runs": len(runs),
        "succeeded": sum(r.status == "succeeded" for r in runs),
        "median": statistics.median(late) if late else float("nan"),
        "worst": late[-1] if late else float("nan"),
        "spread": sorted(spread.values(), reverse=True),
        "cpu": cpu,
    }


CLAIMER = textwrap.dedent(
    """
    import json, sys, time
    from datetime import datetime, timedelta, timezone
    from notifier.ledger import Ledger

    url, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ledger = Ledger(url)
    ledger.nodes.ensure_registered()
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    won = sum(
        ledger.claim("race", base + timedelta(seconds=first + n)) is not None
        for n in range(count)
    )
    print(json.dumps({"won": won, "seconds": time.perf_counter() - started}), flush=True)
    ledger.close()
    """
)


def claims(url: str, processes: int, per_process: int, *, shared: bool) -> float:
    """Successful claims per second of ``processes`` claimers released together."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLAIMER,
                url,
                str(0 if shared else i * per_process),
                str(per_process),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(processes)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [
        json.loads(proc.communicate(timeout=600)[0].strip().splitlines()[-1]) for proc in procs
    ]
    wall = time.perf_counter() - started
    won = sum(r["won"] for r in results)
    expected = per_process if shared else per_process * processes
    assert won == expected, (won, expected)  # every slot exactly once
    return won / wall


def main() -> int:
    quick = "--quick" in sys.argv
    jobs = 12 if quick else JOBS
    try:
        context = postgres_server()
        server = context.__enter__()
    except Unavailable as why:
        print(f"skipped: no PostgreSQL to benchmark with ({why})")
        return 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            print(
                f"{jobs} jobs due at one second, notebooks sleeping {SLEEP} s, "
                f"{WORKERS} workers per node, one PostgreSQL ledger ({os.cpu_count()} cores):"
            )
            results = []
            for nodes in (1, 2, 3):
                folder = base / f"burst-{nodes}"
                folder.mkdir()
                result = burst(folder, server.create_database("bench"), nodes, jobs)
                results.append(result)
                print(
                    f"  {nodes} node(s): start lateness median {result['median']:.1f} s, "
                    f"worst {result['worst']:.1f} s; {result['succeeded']}/{jobs} succeeded; "
                    f"runs per node {result['spread']}; CPU {result['cpu']:.0f} s "
                    f"({result['cpu'] / jobs:.1f} s per run, nodes included)",
                    flush=True,
                )
            one = results[0]
            for result in results[1:]:
                print(
                    f"  {result['nodes']} nodes vs 1: median {one['median'] / result['median']:.2f}x "
                    f"earlier, worst {one['worst'] / result['worst']:.2f}x earlier"
                )

            processes, per = (4, 200) if quick else (8, 500)
            print(f"claims per second, {processes} processes, {per} claims each:")
            sqlite_dir = base / "sqlite"
            sqlite_dir.mkdir()
            for shared in (True, False):
                what = "racing for the same slots" if shared else "disjoint slots"
                pg = claims(server.create_database("claims"), processes, per, shared=shared)
                lite = claims(
                    f"sqlite:///{sqlite_dir / f'claims-{shared}.db'}", processes, per, shared=shared
                )
                print(
                    f"  {what}: PostgreSQL {pg:,.0f} claims/s, SQLite {lite:,.0f} claims/s "
                    f"(PostgreSQL/SQLite {pg / lite:.2f}x)",
                    flush=True,
                )
    finally:
        context.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
