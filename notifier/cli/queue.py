"""``notifier queue``: the mail waiting to go out, and retrying or dropping it by hand."""

from __future__ import annotations

import argparse
import json
import sys

from notifier.cli import limited
from notifier.durations import MAX_COUNT, Limit
from notifier.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `queue` command (list, retry, drop queued mail)."""
    parser = subparsers.add_parser(
        "queue",
        help="mail waiting to be delivered; retry or drop it",
        description=(
            "Without an action: list the mail that waits (queued, being sent, deferred after "
            "a temporary failure with its next try and last error, or with an unknown "
            "outcome). 'retry ID' (or 'retry --all') sends it now from this process; "
            "'drop ID' gives up on it (recorded as dropped, never sent). ID is the number "
            "in the first column."
        ),
    )
    parser.add_argument("action", nargs="?", choices=("list", "retry", "drop"), default="list")
    parser.add_argument(
        "id",
        nargs="?",
        type=limited(
            Limit(1, MAX_COUNT, count=True), "the number in the first column of `notifier queue`"
        ),
        metavar="ID",
        help="the message's number",
    )
    parser.add_argument("--all", action="store_true", help="retry: every deferred message")
    parser.add_argument("--recipient", metavar="ADDRESS", help="only this recipient of ID")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--jobs", default="jobs.yaml", metavar="FILE", help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier queue`; returns the exit code."""
    from notifier.cli.context import resolve_jobs_file, settings_for_jobs
    from notifier.ledger import Ledger, NoLedgerYet

    if args.action == "list" and (args.id is not None or args.all):
        raise UsageError("Listing takes no ID or --all.", "notifier queue retry ID | --all")
    if args.action == "retry" and (args.id is None) == (not args.all):
        raise UsageError("Retry needs an ID or --all (not both).", "e.g. notifier queue retry 12")
    if args.action == "drop" and args.id is None:
        raise UsageError("Drop needs the ID of a message.", "e.g. notifier queue drop 12")
    # listing and dropping never send; a retry does, so it needs valid SMTP settings
    settings = settings_for_jobs(resolve_jobs_file(args.jobs), smtp=args.action == "retry")
    try:
        ledger = Ledger(settings.db_url, create=args.action != "list")
    except NoLedgerYet as none:
        print("[]" if args.json else f"the queue is empty: {none.message}")
        return 0
    try:
        if args.action == "list":
            return _list(ledger, args.json)
        if args.action == "drop":
            return _drop(ledger, settings, args.id, args.recipient)
        return _retry(ledger, settings, args.id, args.recipient)
    finally:
        ledger.close()


def _list(ledger, as_json: bool) -> int:  # noqa: ANN001
    from notifier.cli.history import delivery_line
    from notifier.ledger.queries import mail_row, waiting_mail

    rows = [mail_row(row) for row in waiting_mail(ledger)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("the queue is empty: nothing waits to be delivered")
        return 0
    current = None
    for row in rows:
        if row["id"] != current:
            current = row["id"]
            print(f"{row['id']:>6}  {row['job']}  {row['subject']!r}  (run {row['run_id']})")
        print(f"        {delivery_line(row)}")
    return 0


def _drop(ledger, settings, message_id: int, recipient: str | None) -> int:  # noqa: ANN001
    dropped = ledger.queue.drop(message_pk=message_id, recipient=recipient)
    if not dropped:
        raise UsageError(
            f"Nothing waiting under ID {message_id}"
            + (f" for {recipient}" if recipient else "")
            + ".",
            "see `notifier queue` for the IDs of waiting mail",
        )
    print(f"dropped {len(dropped)} recipient(s) of message {message_id}; they will not be sent")
    message = ledger.queue.message(message_id)
    if message is not None:  # the run may now be settled (its problems mailed if we can)
        from notifier.delivery.worker import Deliverer, default_transports

        can_send = settings.smtp_error is None
        deliverer = Deliverer(ledger, settings, default_transports(settings), notify=can_send)
        deliverer.settle({message.run_id})
    return 0


def _retry(ledger, settings, message_id: int | None, recipient: str | None) -> int:  # noqa: ANN001
    from notifier.cli.context import announce_outbox
    from notifier.delivery.worker import Deliverer, default_transports
    from notifier.runs.summary import outcome_phrase

    rows = ledger.queue.retry(message_pk=message_id, recipient=recipient, all_=message_id is None)
    if not rows:
        raise UsageError(
            "Nothing to retry"
            + (f" under ID {message_id}" if message_id is not None else "")
            + ".",
            "see `notifier queue` (delivered mail is never sent again)",
        )
    announce_outbox(settings)
    deliverer = Deliverer(ledger, settings, default_transports(settings))
    pks = [message_id] if message_id is not None else None
    outcomes = deliverer.deliver(message_pks=pks)
    for outcome in outcomes:
        print(f"{outcome.subject!r} to {outcome.recipient}: {outcome_phrase(outcome)}")
    statuses = {o.status.value for o in outcomes}
    if statuses - {"delivered", "deferred"}:
        return 1
    if "deferred" in statuses or not outcomes:
        if not outcomes:
            print("claimed by another process; `notifier queue` shows the result", file=sys.stderr)
        return 75
    return 0
