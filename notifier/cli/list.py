"""``notifier list``: jobs, schedule, next run, last outcome."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `list` command (jobs with next run and last outcome)."""
    parser = subparsers.add_parser(
        "list",
        help="jobs with their next run and last outcome",
        description=(
            "List the jobs of JOBS_FILE (default: jobs.yaml in the project folder) with their "
            "schedule, next run and the outcome of their last run from the ledger. "
            "Needs no SMTP settings."
        ),
    )
    parser.add_argument("jobs_file", nargs="?", default="jobs.yaml", metavar="JOBS_FILE")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier list`; returns the exit code."""
    from notifier.cli.context import resolve_jobs_file, settings_for_jobs
    from notifier.jobs import load_jobs
    from notifier.ledger import Ledger, NoLedgerYet

    path = resolve_jobs_file(args.jobs_file)
    jobs_file = load_jobs(path)
    settings = settings_for_jobs(path, smtp=False)  # never sends
    try:
        ledger: Ledger | None = Ledger(settings.db_url, create=False)
    except NoLedgerYet:  # nothing ran yet: list the jobs without creating a ledger
        ledger = None
    rows = []
    try:
        paused = ledger.paused() if ledger is not None else {}
        for job in jobs_file.jobs:
            upcoming = job.next_fire_times(count=1) if job.enabled else []
            last = ledger.last_run(job.name) if ledger is not None else None
            rows.append(
                {
                    "name": job.name,
                    "enabled": job.enabled,
                    "schedule": job.schedule.describe(),
                    "timezone": job.timezone,
                    "next_run": upcoming[0].isoformat() if upcoming else None,
                    "last_status": last.status if last else None,
                    "last_slot": last.slot.astimezone(job.tz).isoformat() if last else None,
                    "last_error": last.error if last else None,
                    "paused": _pause(paused.get(job.name), job.tz),
                }
            )
    finally:
        if ledger is not None:
            ledger.close()
    if args.json:
        print(json.dumps({"path": str(jobs_file.path), "jobs": rows}, indent=2))
        return 0
    header = f"{'JOB':<24} {'SCHEDULE':<28} {'NEXT RUN':<26} LAST"
    print(header)
    for row in rows:
        nxt = row["next_run"] or ("disabled" if not row["enabled"] else "-")
        if row["paused"] and row["enabled"]:
            nxt = "PAUSED"
        last = f"{row['last_status']} ({row['last_slot']})" if row["last_status"] else "never ran"
        print(f"{row['name']:<24} {row['schedule'][:28]:<28} {nxt:<26} {last}")
    for row in rows:
        if row["paused"]:
            held = row["paused"]
            reason = f": {held['reason']}" if held["reason"] else ""
            print(
                f"{row['name']}: paused by {held['by']} since {held['since']}{reason} "
                f"(notifier resume {row['name']})"
            )
    return 0


def _pause(held: dict | None, zone) -> dict | None:
    """A job's pause as JSON (None when it is not paused)."""
    if not held:
        return None
    return {
        "since": held["paused_at"].astimezone(zone).isoformat(),
        "by": held["paused_by"],
        "reason": held["reason"],
    }
