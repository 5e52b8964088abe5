"""``notifier show RUN_ID [WHAT]``: one run in full, from any node on the ledger.

Everything comes from the ledger, not from the run folder (which is on the machine that
ran it): the rendered output, the worker's log, the failure details and the emails as
they were sent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from notifier.cli import limited
from notifier.durations import Limit

WHAT = ("summary", "output", "log", "failure", "email")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `show` command (one run, its output, log and emails)."""
    parser = subparsers.add_parser(
        "show",
        help="one run: its output, log, failure and emails (from any node)",
        description=(
            "Show one run from the ledger, whichever node ran it. RUN_ID is the id "
            "notifier history --json prints (or its first characters). WHAT: summary "
            "(default: status, node, files, every email with a number), output (the "
            "rendered output notebook, HTML), log (the worker's log), failure (error, "
            "failing cell, traceback), email N (the N-th email as sent, .eml)."
        ),
    )
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument("what", nargs="?", default="summary", choices=WHAT, metavar="WHAT")
    parser.add_argument(
        "number",
        nargs="?",
        type=limited(Limit(1, 100_000, count=True), "e.g. email 1 for the first"),
        metavar="N",
        help="for email: which one",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    parser.add_argument("--json", action="store_true", help="summary as JSON")
    parser.add_argument("--jobs", default="jobs.yaml", metavar="FILE", help="for time zones")
    parser.set_defaults(handler=run)


def _find(ledger, wanted: str):
    from notifier.errors import UsageError
    from notifier.ledger.queries import runs_by_prefix

    if len(wanted) < 4:
        raise UsageError(
            f"RUN_ID {wanted!r} is too short.", "give at least 4 characters of the run id"
        )
    found = runs_by_prefix(ledger, wanted)
    if not found:
        raise UsageError(
            f"No run {wanted!r} in the ledger.",
            "notifier history --json lists run ids (old runs are removed by keep_runs)",
        )
    if len(found) > 1:
        raise UsageError(
            f"{wanted!r} is the start of several run ids.", "give more characters of the id"
        )
    return found[0]


def _emit(data: bytes, target: str | None) -> None:
    if target:
        Path(target).write_bytes(data)
        print(f"written to {target}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier show`; returns the exit code."""
    from notifier.cli.context import resolve_jobs_file, settings_for_jobs
    from notifier.cli.history import _job_zones, delivery_line
    from notifier.errors import UsageError
    from notifier.ledger import Ledger
    from notifier.ledger.queries import email_as_sent, run_rows
    from notifier.runs import files

    jobs_path = resolve_jobs_file(args.jobs)
    settings = settings_for_jobs(jobs_path, smtp=False)  # reads the ledger, never sends
    if args.what != "email" and args.number is not None:
        raise UsageError(f"{args.what} takes no number.", f"notifier show {args.run_id} email N")
    ledger = Ledger(settings.db_url, create=False)
    try:
        run = _find(ledger, args.run_id)
        if args.what in ("output", "log", "failure"):
            name = {"output": files.OUTPUT, "log": files.LOG, "failure": files.FAILURE}
            data = ledger.run_file(run.run_id, name[args.what])
            if data is None and args.what == "failure" and run.error:
                # it failed outside the notebook's cells (an email that could not be built,
                # a missing notebook): the error is all there is
                data = f"{run.error}\n".encode()
            if data is None:
                where = f" (the run folder on {run.owner.rsplit(':', 2)[0]}: {run.output_path})"
                raise UsageError(
                    f"Run {run.run_id} has no {args.what} in the ledger.",
                    "it did not produce one (a run that did not fail has no failure), or it "
                    "ran before notifier 0.2" + (where if run.output_path else ""),
                )
            _emit(data, args.output)
            return 0
        if args.what == "email":
            pks = ledger.queue.messages_of(run.run_id)
            if not pks:
                raise UsageError(f"Run {run.run_id} sent no email.", "see notifier show RUN_ID")
            if args.number is None or not 1 <= args.number <= len(pks):
                raise UsageError(
                    f"Say which email of run {run.run_id}: 1 to {len(pks)}.",
                    f"e.g. notifier show {run.run_id[:12]} email 1",
                )
            data = email_as_sent(ledger, pks[args.number - 1])
            assert data is not None
            _emit(data, args.output)
            return 0
        (row,) = run_rows(ledger, [run], _job_zones(jobs_path).get, settings.secrets())
        emails = []
        for number, pk in enumerate(ledger.queue.messages_of(run.run_id), start=1):
            message = ledger.queue.message(pk)
            if message is not None:
                emails.append({"number": number, "subject": message.subject, "id": pk})
        row["emails"] = emails
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    _print_summary(row, delivery_line)
    return 0


def _print_summary(row: dict, delivery_line) -> None:
    duration = f"{row['duration_s']:.1f}s" if row["duration_s"] is not None else "-"
    print(f"run {row['run_id']}: {row['job']}, slot {row['slot']} ({row['trigger']})")
    print(f"  status: {row['status']} (attempt {row['attempt']}, {duration})")
    print(f"  ran on: {row['host']} (node {row['owner']})")
    if row["error"]:
        print(f"  error: {row['error']}")
    elif row["notes"]:
        print(f"  notes: {row['notes']}")
    if row["output"]:
        print(f"  run folder on {row['host']}: {Path(row['output']).parent}")
    short = row["run_id"][:12]
    for name, what in (
        ("output.html", "output"),
        ("worker.log", "log"),
        ("failure.json", "failure"),
    ):
        if name in row["files"]:
            print(f"  {what}: notifier show {short} {what}")
    for email in row["emails"]:
        print(
            f"  email {email['number']}: {email['subject']}  (notifier show {short} email {email['number']})"
        )
    for delivery in row["deliveries"]:
        print(f"    {delivery_line(delivery)}")
