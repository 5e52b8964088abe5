"""``notifier run``: execute a notebook (or a job from jobs.yaml) now and deliver its emails."""

from __future__ import annotations

import argparse
from pathlib import Path

from notifier.cli import limited
from notifier.durations import TIMEOUT
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
        type=limited(TIMEOUT, "e.g. --timeout 600 or 10m"),
        metavar="SECONDS",
        help="wall-clock limit for the whole run (default 600; 1s to 1d, or like 10m)",
    )
    parser.add_argument(
        "--cell-timeout",
        type=limited(TIMEOUT, "e.g. --cell-timeout 120 or 2m"),
        metavar="SECONDS",
        help="limit per cell (1s to 1d)",
    )
    parser.add_argument(
        "--kernel",
        metavar="NAME",
        help="the Jupyter kernel to run it with (jupyter kernelspec list)",
    )
    parser.add_argument(
        "--hide-code", action="store_true", help="archive (and attach) the output without the code"
    )
    parser.add_argument(
        "--attach-output",
        choices=("html", "pdf"),
        help="attach the rendered output notebook to every email",
    )
    parser.add_argument("--jobs", default="jobs.yaml", metavar="FILE", help="for a job name")
    parser.add_argument(
        "--dry-run", action="store_true", help="write the emails to the outbox instead"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="do not run the notebook: deliver now what the latest run left deferred "
        "(e.g. after a daily sending limit)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier run`; returns the exit code (75: mail is waiting in the queue)."""
    from notifier.cli.context import announce_outbox
    from notifier.ledger import Ledger
    from notifier.notebook.params import check_parameters
    from notifier.notebook.processes import hide_environment_from_children
    from notifier.runs.path import RunPath

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
    _check_addresses(args)  # a typo is refused before the notebook runs (exit 2)
    target = Path(args.target)
    if target.suffix == ".ipynb" or target.is_file():
        job, settings = _notebook_job(args, target)
    else:
        job, settings = _jobs_file_job(args)
    if args.resume:
        return _resume(job, settings)
    check_parameters(job.notebook, job.parameters)  # a typo is refused, nobody is mailed
    if args.kernel:
        _check_kernel(args.kernel)
    announce_outbox(settings, dry_run=args.dry_run)
    ledger = Ledger(settings.db_url, lease_seconds=settings.lease_seconds)
    progress = Progress(ledger)
    try:
        result = RunPath(settings, ledger, on_outcome=progress).run_now(job, dry_run=args.dry_run)
    finally:
        progress.close()
        ledger.close()
    return _report(result)


def _resume(job, settings) -> int:  # noqa: ANN001 - Job, Settings (imported lazily)
    """``--resume``: deliver now what the job's latest run left deferred; no notebook runs."""
    from notifier.delivery.worker import Deliverer, default_transports
    from notifier.ledger import Ledger
    from notifier.runs.path import RunResult

    ledger = Ledger(settings.db_url, lease_seconds=settings.lease_seconds)
    try:
        run = ledger.last_run(job.name)
        if run is None:
            raise UsageError(
                f"{job.name} has no run whose mail could be resumed.",
                f"run it first: notifier run {job.name}",
            )
        waiting = ledger.queue.retry(run_id=run.run_id)
        if not waiting:
            print(f"{job.name}: run {run.run_id} ({run.status}) has no mail waiting")
            return 0
        print(f"{job.name}: resuming run {run.run_id}: {len(waiting)} recipient(s) waiting")
        progress = Progress(ledger, total=len(waiting))
        try:
            deliverer = Deliverer(ledger, settings, default_transports(settings))
            outcomes = deliverer.deliver(run_id=run.run_id, on_outcome=progress)
        finally:
            progress.close()
        stored = ledger.get(run.run_id) or run
        return _report(RunResult(stored, None, outcomes))
    finally:
        ledger.close()


class Progress:
    """A progress bar on the terminal while a run's emails go out (tqdm, on stderr).

    Shown for more than :attr:`THRESHOLD` recipients, and only when stderr is a terminal
    (never in logs, pipes or cron mail). Fed by the deliverer's ``on_outcome``.
    """

    THRESHOLD = 10

    def __init__(self, ledger, total: int | None = None) -> None:  # noqa: ANN001 - Ledger
        self.ledger = ledger
        self.total = total
        self.bar = None
        self.counts: dict[str, int] = {}
        self._decided = False

    def __call__(self, outcome) -> None:  # noqa: ANN001 - Outcome
        """Count one recipient's answer."""
        import sys

        if outcome.purpose != "report":
            return
        if not self._decided:
            self._decided = True
            total = self.total
            if total is None:
                total = sum(self.ledger.queue.counts(outcome.run_id).values())
            if total > self.THRESHOLD and sys.stderr.isatty():
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="rcpt", desc="sending", file=sys.stderr)
        status = outcome.status.value
        self.counts[status] = self.counts.get(status, 0) + 1
        if self.bar is not None:
            self.bar.set_postfix(self.counts, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        """End the bar (it stays on the screen with its final counts)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _check_kernel(name: str) -> None:
    """``--kernel NAME`` names an installed kernel (exit 2 with the list, not a failed run)."""
    from notifier.jobs.schema import check_kernel as check

    try:
        check(name)
    except ValueError as error:
        raise UsageError(f"--kernel: {error}", "see `jupyter kernelspec list`") from None


def _check_addresses(args: argparse.Namespace) -> None:
    """MessageError (exit 2) for an address on the command line that no email could carry."""
    from notifier.mail.model import parse_addresses

    for option, values in (
        ("to", args.to),
        ("cc", args.cc),
        ("bcc", args.bcc),
        ("on-failure", args.on_failure),
    ):
        parse_addresses(values or None, role=f"--{option}")


def _notebook_job(args: argparse.Namespace, target: Path) -> tuple:
    """An ad-hoc job for NOTEBOOK, named after the notebook (as history shows it)."""
    from notifier.cli.context import settings_from_env
    from notifier.notebook.params import load_notebook_json, parse_cli_value
    from notifier.project import project_root
    from notifier.runs.path import adhoc_job

    load_notebook_json(target)  # a missing or broken notebook: one clear error, exit 2
    settings = settings_from_env(smtp=not args.dry_run)
    root = project_root()
    resolved = target.resolve()
    try:
        name = resolved.relative_to(root).as_posix()
    except ValueError:
        name = resolved.name
    job = adhoc_job(
        resolved,
        name=name,
        parameters={name: parse_cli_value(value) for name, value in args.parameter},
        to=args.to,
        cc=args.cc,
        bcc=args.bcc,
        on_failure=args.on_failure,
        timeout=args.timeout,
        cell_timeout=args.cell_timeout,
        timezone_name=settings.timezone,
        kernel=args.kernel,
        hide_code=args.hide_code,
        attach_output=args.attach_output,
    )
    return job, settings


def _jobs_file_job(args: argparse.Namespace) -> tuple:
    """The job named ``args.target`` in the jobs file, with the command line's overrides."""
    from dataclasses import replace

    from notifier.cli.context import resolve_jobs_file, settings_for_jobs
    from notifier.jobs import load_jobs
    from notifier.notebook.params import parse_cli_value

    jobs_path = resolve_jobs_file(args.jobs)
    if not jobs_path.is_file():
        raise UsageError(
            f"{args.target!r} is not a notebook, and there is no {args.jobs} to find a job "
            "of that name in.",
            "pass the path of an .ipynb file, or run from the folder of your jobs.yaml "
            "(or --jobs FILE)",
        )
    job = load_jobs(jobs_path).get(args.target)
    overrides: dict = {}
    if args.parameter:
        overrides["parameters"] = {
            **job.parameters,
            **{name: parse_cli_value(value) for name, value in args.parameter},
        }
    for field in ("to", "cc", "bcc"):
        if getattr(args, field):
            overrides[field] = tuple(getattr(args, field))
    if args.on_failure:
        overrides["on_failure"] = tuple(args.on_failure)
    elif args.to:  # trying a job on yourself must not mail its failure list
        overrides["on_failure"] = tuple(args.to)
    if args.timeout:
        overrides["timeout_seconds"] = args.timeout
    if args.cell_timeout:
        overrides["cell_timeout_seconds"] = args.cell_timeout
    if args.kernel:
        overrides["kernel"] = args.kernel
    if args.hide_code:
        overrides["hide_code"] = True
    if args.attach_output:
        overrides["attach_output"] = args.attach_output
    settings = settings_for_jobs(jobs_path, smtp=not args.dry_run)
    return (replace(job, **overrides) if overrides else job), settings


def _report(result) -> int:  # noqa: ANN001 - RunResult, imported lazily
    """Print how the run went, one line per email and recipient; the exit code."""
    from notifier.runs.summary import outcome_phrase

    run = result.run
    execution = result.execution
    duration = f" in {run.duration_s:.1f}s" if run.duration_s is not None else ""
    print(f"{run.job}: run {run.run_id} {run.status}{duration}")
    if execution is not None:
        print(f"  run folder: {execution.run_dir}")
        if execution.output_notebook.is_file():
            print(f"  output: {execution.output_notebook}")
        if execution.output_html.is_file():
            print(f"  html:   {execution.output_html}")
        if execution.skip_reason is not None:
            print(f"  skipped: {execution.skip_reason}")
        if execution.status == "succeeded" and not execution.emails:
            print("  the notebook declared no emails (use notifier.notebook.report.email(...))")
    if run.error:
        print(f"  error: {run.error}")
    if run.status == "suppressed" and run.notes:
        print(f"  {run.notes}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    for outcome in result.outcomes:
        what = "failure email" if outcome.purpose == "failure" else f"{outcome.purpose} email"
        what = "email" if outcome.purpose == "report" else what
        print(f"  {what} {outcome.subject!r} to {outcome.recipient}: {outcome_phrase(outcome)}")
    if run.status == "delivering":
        print(
            "  some mail is waiting in the queue: a running `notifier schedule` retries it, "
            "or run `notifier queue retry --all`; `notifier queue` shows it"
        )
        return EXIT_QUEUED
    return 0 if run.status in {"succeeded", "skipped", "suppressed"} else 1


# sendmail's EX_TEMPFAIL: accepted into the queue, not yet delivered
EXIT_QUEUED = 75
