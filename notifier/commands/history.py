"""``notifier history``: what ran, when, with what outcome."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `history` command (past runs from the ledger)."""
    parser = subparsers.add_parser("history", help="past runs from the ledger")
    parser.add_argument("job", nargs="?", help="only this job")
    parser.add_argument("--failed", action="store_true", help="only failed or interrupted runs")
    parser.add_argument("--limit", type=int, default=20, metavar="N")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--jobs", default="jobs.yaml", metavar="FILE", help="for each job's time zone"
    )
    parser.set_defaults(handler=run)


def _job_zones(path: Path) -> dict:
    """Each job's time zone from jobs.yaml, when it is there and valid (history works without)."""
    from notifier.errors import NotifierError
    from notifier.jobs import load_jobs

    try:
        return {job.name: job.tz for job in load_jobs(path).jobs}
    except (NotifierError, OSError):
        return {}


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier history`; returns the exit code."""
    from notifier.commands.common import resolve_jobs_file, settings_for_jobs
    from notifier.errors import UsageError
    from notifier.ledger import Ledger

    if args.limit < 1:
        raise UsageError("--limit must be at least 1.", "e.g. --limit 20")
    jobs_path = resolve_jobs_file(args.jobs)
    settings = settings_for_jobs(jobs_path)
    zones = _job_zones(jobs_path)
    ledger = Ledger(settings.db_url)
    try:
        runs = ledger.history(args.job, failed=args.failed, limit=args.limit)
        rows = []
        for run in runs:
            deliveries = ledger.deliveries(run.run_id)
            rows.append(
                {
                    "job": run.job,
                    "run_id": run.run_id,
                    "slot": run.slot.astimezone(zones[run.job]).isoformat()
                    if run.job in zones
                    else run.slot.isoformat(),
                    "trigger": run.trigger,
                    "status": run.status,
                    "attempt": run.attempt,
                    "duration_s": run.duration_s,
                    "recipients": sorted({d.recipient for d in deliveries}) or list(run.recipients),
                    "deliveries": [
                        {
                            "recipient": d.recipient,
                            "status": d.status,
                            "code": d.code,
                            "reply": d.reply,
                        }
                        for d in deliveries
                    ],
                    "error": run.error,
                    "notes": run.notes,
                    "output": run.output_path,
                }
            )
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        if args.job and zones and args.job not in zones:
            raise UsageError(
                f"No job named {args.job!r} in {args.jobs} and no runs recorded for it.",
                f"known jobs: {', '.join(sorted(zones))}",
            )
        print("no runs recorded" + (f" for {args.job}" if args.job else ""))
        return 0
    for row in rows:
        duration = f"{row['duration_s']:.1f}s" if row["duration_s"] is not None else "-"
        print(
            f"{row['slot']}  {row['job']:<20} {row['status']:<11} {duration:>7}  {row['trigger']}"
        )
        if row["recipients"]:
            print(f"    to: {', '.join(row['recipients'])}")
        if row["error"]:
            print(f"    error: {row['error']}")
        elif row["notes"]:
            print(f"    {row['notes']}")
        if row["output"]:
            print(f"    output: {row['output']}")
    return 0
