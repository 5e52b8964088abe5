"""``notifier history``: what ran, when, how it ended, and what happened to every email."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from notifier.cli import limited
from notifier.durations import Limit

HISTORY_LIMIT = Limit(1, 100_000, count=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `history` command (past runs from the ledger)."""
    parser = subparsers.add_parser(
        "history",
        help="past runs and what happened to each email",
        description=(
            "Past runs from the ledger, newest first: status, slot, duration, and per "
            "recipient whether the email was delivered, is deferred (with the next try), "
            "was refused (with the server's reply), expired, or has an unknown outcome."
        ),
    )
    parser.add_argument("job", nargs="?", help="only this job (or notebook path)")
    parser.add_argument("--failed", action="store_true", help="only failed or interrupted runs")
    parser.add_argument(
        "--limit",
        type=limited(HISTORY_LIMIT, "e.g. --limit 20"),
        default=20,
        metavar="N",
        help=f"how many runs to show (default 20; at most {HISTORY_LIMIT.high:.0f})",
    )
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


def delivery_line(delivery: dict) -> str:
    """``bob@x: deferred, next try 08:01:30 (2 attempts): 451 try later``."""
    status = delivery["status"]
    who = delivery["recipient"]
    if delivery.get("purpose") not in (None, "report"):
        who = f"{delivery['purpose']} email to {who}"
    reply = " ".join(str(x) for x in (delivery.get("code"), delivery.get("reply")) if x)
    if status == "deferred":
        when = (delivery.get("next_attempt_at") or "?")[11:19]
        tries = delivery.get("attempts") or 0
        return f"{who}: deferred, next try {when} ({tries} attempt(s)): {reply}"
    if status == "unknown":
        return f"{who}: outcome unknown (possibly delivered): {reply}"
    if status == "delivered":
        where = delivery.get("location")
        return f"{who}: delivered" + (f" to the outbox ({where})" if where else f" ({reply})")
    return f"{who}: {status}" + (f": {reply}" if reply else "")


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier history`; returns the exit code."""
    from notifier.cli.context import resolve_jobs_file, settings_for_jobs
    from notifier.errors import UsageError
    from notifier.ledger import Ledger, NoLedgerYet
    from notifier.ledger.queries import history_rows

    jobs_path = resolve_jobs_file(args.jobs)
    settings = settings_for_jobs(jobs_path, smtp=False)  # reads the ledger, never sends
    zones = _job_zones(jobs_path)
    try:
        ledger = Ledger(settings.db_url, create=False)
    except NoLedgerYet as none:
        if args.json:
            print("[]")
        print(f"no runs recorded yet: {none.message}", file=sys.stderr if args.json else sys.stdout)
        return 0
    try:
        # the same query as the dashboard's /api/runs: one place says what history is
        rows = history_rows(
            ledger,
            args.job,
            failed=args.failed,
            limit=args.limit,
            zone_of=zones.get,
            secrets=settings.secrets(),
        )
        total = ledger.count_runs(args.job) if not rows else len(rows)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        if args.job and zones and args.job not in zones and not total:
            raise UsageError(
                f"No job named {args.job!r} in {args.jobs} and no runs recorded for it.",
                f"known jobs: {', '.join(sorted(zones))}",
            )
        what = f" for {args.job}" if args.job else ""
        if args.failed:
            print(f"no failed runs{what} ({total} run{'s' if total != 1 else ''} recorded)")
        else:
            print(f"no runs recorded{what}")
        return 0
    for row in rows:
        duration = f"{row['duration_s']:.1f}s" if row["duration_s"] is not None else "-"
        print(
            f"{row['slot']}  {row['job']:<20} {row['status']:<11} {duration:>7}  {row['trigger']}"
        )
        for delivery in row["deliveries"]:
            print(f"    {delivery_line(delivery)}")
        if not row["deliveries"] and row["recipients"]:
            print(f"    to: {', '.join(row['recipients'])}")
        if row["error"]:
            print(f"    error: {row['error']}")
        elif row["notes"]:
            print(f"    {row['notes']}")
        if row["output"]:
            print(f"    output: {row['output']} (on {row['host']})")
        if row["files"]:
            print(f"    from any node: notifier show {row['run_id'][:12]}")
    return 0
