"""``notifier pause JOB`` / ``notifier resume JOB``: hold a job on every node.

The pause is stored in the ledger, so every daemon on it obeys (a slot of a paused job is
not run; each daemon logs it once per slot), and it survives restarts and redeploys.
``jobs.yaml`` stays the source of truth for everything else (``enabled: false`` there
disables a job for good). ``notifier run JOB`` still runs a paused job on request.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pause` and `resume` commands."""
    pause = subparsers.add_parser(
        "pause",
        help="stop running a job's slots on every node (until notifier resume)",
        description=(
            "Pause JOB on every node of the ledger: its scheduled slots are not run (each "
            "daemon logs the slots it leaves out) until `notifier resume JOB`. Shown by "
            "notifier list. A slot already running goes on."
        ),
    )
    pause.add_argument("job", metavar="JOB", help="a job of the jobs file")
    pause.add_argument("--reason", default="", metavar="TEXT", help="why (shown by list)")
    pause.add_argument("--jobs", default="jobs.yaml", metavar="FILE", help="the jobs file")
    pause.set_defaults(handler=run_pause)
    resume = subparsers.add_parser(
        "resume",
        help="run a paused job's slots again",
        description="Lift `notifier pause JOB`: the next slot of JOB runs on its schedule.",
    )
    resume.add_argument("job", metavar="JOB", help="a paused job")
    resume.add_argument("--jobs", default="jobs.yaml", metavar="FILE", help="the jobs file")
    resume.set_defaults(handler=run_resume)


def _operator() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _ledger_for(args: argparse.Namespace):
    """The ledger of the project whose jobs file names JOB (exit 2 for an unknown job)."""
    from notifier.cli.context import resolve_jobs_file, settings_for_jobs
    from notifier.errors import UsageError
    from notifier.jobs import load_jobs
    from notifier.ledger import Ledger

    path = resolve_jobs_file(args.jobs)
    names = [job.name for job in load_jobs(path).jobs]  # a bad jobs file: exit 2
    if args.job not in names:
        from difflib import get_close_matches

        close = get_close_matches(args.job, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(
            f"No job named {args.job!r} in {path}.",
            f"{hint}known jobs: {', '.join(names) or '(none)'}",
        )
    settings = settings_for_jobs(path, smtp=False)
    return Ledger(settings.db_url, lease_seconds=settings.lease_seconds)


def run_pause(args: argparse.Namespace) -> int:
    """Carry out `notifier pause`; returns the exit code."""
    ledger = _ledger_for(args)
    try:
        if ledger.pause(args.job, reason=args.reason, by=_operator()):
            print(f"{args.job}: paused on every node (notifier resume {args.job} to undo)")
            return 0
        held = ledger.paused().get(args.job, {})
    finally:
        ledger.close()
    since = held.get("paused_at")
    print(
        f"{args.job}: already paused"
        + (f" by {held.get('paused_by')}" if held.get("paused_by") else "")
        + (f" since {since.astimezone().isoformat(timespec='seconds')}" if since else "")
    )
    return 0


def run_resume(args: argparse.Namespace) -> int:
    """Carry out `notifier resume`; returns the exit code."""
    ledger = _ledger_for(args)
    try:
        lifted = ledger.resume(args.job)
    finally:
        ledger.close()
    print(f"{args.job}: " + ("resumed on every node" if lifted else "was not paused"))
    return 0
