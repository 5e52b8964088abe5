"""``notifier run JOB``: one run of a jobs.yaml job now, through the ledger."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone


def run_job_now(args: argparse.Namespace) -> int:
    """Run the job named ``args.target`` from ``args.jobs`` (called by the run command)."""
    from notifier.commands.common import announce_outbox, resolve_jobs_file, settings_for_jobs
    from notifier.errors import NotifierError
    from notifier.jobrun import SlotRunner
    from notifier.jobs import load_jobs
    from notifier.ledger import Ledger
    from notifier.notebook_params import check_parameters, parse_cli_value
    from notifier.transport import transport_for

    jobs_path = resolve_jobs_file(args.jobs)
    jobs_file = load_jobs(jobs_path)
    job = jobs_file.get(args.target)
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
    if overrides:
        from dataclasses import replace

        job = replace(job, **overrides)
    check_parameters(job.notebook, job.parameters)  # a typo is refused, nobody is mailed
    settings = settings_for_jobs(jobs_path)
    announce_outbox(settings, dry_run=args.dry_run)
    ledger = Ledger(settings.db_url)
    try:
        runner = SlotRunner(
            settings,
            ledger,
            transport_factory=lambda: transport_for(settings, dry_run=args.dry_run),
        )
        run = ledger.claim(
            job.name, datetime.now(timezone.utc), trigger="manual", recipients=job.to
        )
        if run is None:
            raise NotifierError(f"Could not claim a manual run of {job.name}.", "try again")
        status = runner.execute_claimed(job, run)
        stored = ledger.get(run.run_id)
    finally:
        ledger.close()
    print(f"{job.name}: run {run.run_id} {status}")
    if stored is not None:
        if stored.output_path:
            print(f"  output: {stored.output_path}")
        if stored.error:
            print(f"  error: {stored.error}")
        if stored.notes:
            print(f"  {stored.notes}")
        ledger = Ledger(settings.db_url)
        try:
            for delivery in ledger.deliveries(run.run_id):
                print(
                    f"  {delivery.status}: {delivery.recipient} {delivery.code or ''} {delivery.reply}".rstrip()
                )
        finally:
            ledger.close()
    return 0 if status in {"succeeded", "skipped", "suppressed"} else 1
