"""``notifier run``: execute a notebook (or a job from jobs.yaml) now and deliver its emails."""

from __future__ import annotations

import argparse
from pathlib import Path

from notifier.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `run` command (run a notebook or a job now)."""
    parser = subparsers.add_parser(
        "run",
        help="run a notebook or a job now",
        description=(
            "Execute NOTEBOOK (an .ipynb path) or the job of that name in jobs.yaml with "
            "papermill, archive the output under runs/, and send the emails it declared."
        ),
    )
    parser.add_argument("target", metavar="NOTEBOOK|JOB")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="notebook parameter (numbers, True/False/None are typed)",
    )
    parser.add_argument(
        "--to",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="recipients of emails that name none (and of the failure email)",
    )
    parser.add_argument("--cc", action="append", default=[], metavar="ADDRESS")
    parser.add_argument("--bcc", action="append", default=[], metavar="ADDRESS")
    parser.add_argument(
        "--on-failure",
        action="append",
        metavar="ADDRESS",
        help="who gets the failure email (default: the recipients)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="wall-clock limit for the whole run (default 600)",
    )
    parser.add_argument("--cell-timeout", type=float, metavar="SECONDS", help="limit per cell")
    parser.add_argument("--jobs", default="jobs.yaml", metavar="FILE", help="for a job name")
    parser.add_argument(
        "--dry-run", action="store_true", help="write the emails to the outbox instead"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier run`; returns the exit code."""
    from notifier.commands.common import announce_outbox, print_results, settings_from_env
    from notifier.notebook_params import check_parameters, parse_cli_value
    from notifier.processes import hide_environment_from_children
    from notifier.runner import DEFAULT_TIMEOUT, RunRequest
    from notifier.runner import run as run_notebook
    from notifier.transport import transport_for

    hide_environment_from_children()
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds.", "e.g. --timeout 600")
    names = [name for name, _ in args.parameter]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(
            f"The parameter(s) {', '.join(repeated)} are given more than once.",
            "pass each -p NAME VALUE once",
        )
    target = Path(args.target)
    if target.suffix != ".ipynb" and not target.is_file():
        from notifier.commands.common import resolve_jobs_file
        from notifier.commands.jobrun import run_job_now

        if not resolve_jobs_file(args.jobs).is_file():
            raise UsageError(
                f"{args.target!r} is not a notebook, and there is no {args.jobs} to find a job "
                "of that name in.",
                "pass the path of an .ipynb file, or run from the folder of your jobs.yaml "
                "(or --jobs FILE)",
            )

        return run_job_now(args)

    settings = settings_from_env()
    request = RunRequest(
        notebook=target,
        parameters={name: parse_cli_value(value) for name, value in args.parameter},
        to=args.to,
        cc=args.cc,
        bcc=args.bcc,
        on_failure=args.on_failure,
        timeout=args.timeout or DEFAULT_TIMEOUT,
        cell_timeout=args.cell_timeout,
    )
    check_parameters(target, request.parameters)  # a refused run prints only its error
    announce_outbox(settings, dry_run=args.dry_run)
    outcome = run_notebook(request, settings, transport_for(settings, dry_run=args.dry_run))
    execution = outcome.execution
    print(f"run {execution.run_id}: {outcome.status} in {execution.duration:.1f}s")
    print(f"  output: {execution.output_notebook}")
    if execution.output_html.is_file():
        print(f"  html:   {execution.output_html}")
    if execution.skip_reason is not None:
        print(f"  skipped: {execution.skip_reason}")
    if outcome.error:
        print(f"  error: {outcome.error}")
    if execution.status == "succeeded" and not execution.emails:
        print("  the notebook declared no emails (use notifier.report.email(...))")
    print_results(outcome.results)
    if outcome.failure_results:
        print("failure email:")
        print_results(outcome.failure_results)
    return 0 if outcome.ok else 1
