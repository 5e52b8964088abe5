"""``notifier validate [jobs.yaml] [--json]``: check a jobs file and show when each job runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from notifier.errors import JobsFileError, NotifierError

FIRE_TIMES = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``validate`` command to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "validate",
        help="check jobs.yaml and show each job's next run times",
        description=(
            "Check a jobs file: every problem is reported with its file:line. "
            f"For a valid file, print each job's schedule and next {FIRE_TIMES} run times."
        ),
    )
    parser.add_argument(
        "path", nargs="?", default="jobs.yaml", help="the jobs file (default: ./jobs.yaml)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def _shown_path(path: Path) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if relative.startswith("..") else relative


def run(args: argparse.Namespace, now: datetime | None = None) -> int:
    """Validate ``args.path``; 0 if valid, 2 (with every problem on stderr) if not."""
    from notifier.jobs import load_jobs

    now = now or datetime.now(timezone.utc)
    try:
        from notifier.cli.context import resolve_jobs_file, settings_for_jobs

        path = resolve_jobs_file(args.path)
        jobs_file = load_jobs(path)
        # the project's settings too (a NOTIFIER_* value out of range stops every command
        # that runs jobs); SMTP_* problems are for `notifier doctor`
        settings_for_jobs(path, smtp=False)
    except JobsFileError as error:
        print(str(error), file=sys.stderr)
        return error.exit_code
    except NotifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code

    entries = []
    for job in jobs_file.jobs:
        times = job.next_fire_times(now, FIRE_TIMES) if job.enabled else []
        warnings = job.warnings()
        for warning in warnings:
            print(
                f"warning: {jobs_file.path}:{job.line}: job {job.name!r}: {warning}",
                file=sys.stderr,
            )
        entries.append(
            {
                "name": job.name,
                "notebook": str(job.notebook),
                "schedule": job.schedule.describe(),
                "timezone": job.timezone,
                "enabled": job.enabled,
                "next_fire_times": [t.isoformat() for t in times],
                "warnings": warnings,
            }
        )
    if args.json:
        print(json.dumps({"path": str(jobs_file.path), "jobs": entries}, indent=2))
        return 0

    count = len(entries)
    print(f"{jobs_file.path}: {count} job{'s' if count != 1 else ''}, valid")
    for entry in entries:
        print()
        print(entry["name"] + ("" if entry["enabled"] else "  (disabled: will not run)"))
        print(f"  notebook:  {_shown_path(Path(entry['notebook']))}")
        print(f"  schedule:  {entry['schedule']}  ({entry['timezone']})")
        if not entry["enabled"]:
            continue
        times = entry["next_fire_times"] or ["none: the schedule has no future run"]
        print(f"  next runs: {times[0]}")
        for when in times[1:]:
            print(f"             {when}")
    return 0
