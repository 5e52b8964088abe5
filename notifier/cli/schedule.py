"""``notifier schedule``: the daemon that runs jobs.yaml on its schedules."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `schedule` command (the scheduling daemon)."""
    parser = subparsers.add_parser(
        "schedule",
        help="run the jobs of jobs.yaml on their schedules (daemon)",
        description=(
            "Run every enabled job of JOBS_FILE on its schedule until SIGTERM or Ctrl-C. "
            "The file is reloaded when it changes; an invalid edit keeps the old schedule."
        ),
    )
    parser.add_argument("jobs_file", nargs="?", default="jobs.yaml", metavar="JOBS_FILE")
    parser.add_argument("--workers", type=int, metavar="N", help="parallel runs (NOTIFIER_WORKERS)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier schedule`; returns the exit code."""
    from notifier.cli.context import announce_outbox, resolve_jobs_file, settings_for_jobs
    from notifier.daemon import Daemon
    from notifier.errors import UsageError
    from notifier.notebook.processes import hide_environment_from_children

    hide_environment_from_children()
    jobs_path = resolve_jobs_file(args.jobs_file)
    settings = settings_for_jobs(jobs_path)
    if args.workers is not None:
        if args.workers < 1:
            raise UsageError("--workers must be at least 1.", "e.g. --workers 4")
        settings = settings.with_overrides(workers=args.workers)
    daemon = Daemon(jobs_path, settings)  # a bad jobs.yaml stops here (exit 2)
    announce_outbox(settings)
    daemon.run_forever()
    return 0
