"""``notifier send``: one message with attachments to several recipients."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from notifier.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `send` command (one email with attachments)."""
    parser = subparsers.add_parser(
        "send",
        help="send one email with attachments",
        description="Send one email (text or HTML, with attachments) to several recipients.",
    )
    parser.add_argument("--to", action="append", default=[], metavar="ADDRESS")
    parser.add_argument("--cc", action="append", default=[], metavar="ADDRESS")
    parser.add_argument("--bcc", action="append", default=[], metavar="ADDRESS")
    parser.add_argument("--from", dest="sender", metavar="ADDRESS", help="default: SMTP_FROM")
    parser.add_argument("--reply-to", action="append", default=[], metavar="ADDRESS")
    parser.add_argument("--subject", "-s", required=True)
    body = parser.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", metavar="TEXT", help="plain-text body")
    body.add_argument("--body-file", type=Path, metavar="FILE", help="plain-text body from a file")
    body.add_argument("--html-file", type=Path, metavar="FILE", help="HTML body from a file")
    parser.add_argument("--attach", action="append", default=[], type=Path, metavar="FILE")
    parser.add_argument(
        "--dry-run", action="store_true", help="write to the outbox instead of sending"
    )
    parser.set_defaults(handler=run)


def _read(path: Path, what: str) -> str:
    if path.is_dir():
        raise UsageError(
            f"The {what} {str(path)!r} is a folder, not a file.", "pass the path of a file"
        )
    if not path.is_file():
        raise UsageError(f"The {what} {str(path)!r} does not exist.", "check the path")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(
            f"The {what} {str(path)!r} is not UTF-8 text.", "save it as UTF-8"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier send`; returns the exit code."""
    from notifier.cli.context import announce_outbox, print_results, settings_from_env
    from notifier.mail.model import Email, compose
    from notifier.mail.parts import attachment_part
    from notifier.mail.transport import transport_for

    # --dry-run never talks to the server, so a bad SMTP setting must not stop it.
    settings = settings_from_env(smtp=not args.dry_run)
    mail = Email(
        subject=args.subject,
        to=args.to,
        cc=args.cc,
        bcc=args.bcc,
        sender=args.sender,
        reply_to=args.reply_to,
        text=args.body
        if args.body is not None
        else (_read(args.body_file, "body file") if args.body_file else None),
        html=_read(args.html_file, "HTML file") if args.html_file else None,
        attachments=[attachment_part(path) for path in args.attach],
    )
    outgoing = compose(
        mail, default_sender=settings.from_address, max_size=settings.max_message_size
    )
    announce_outbox(settings, dry_run=args.dry_run)
    if settings.smtp_error is not None:
        print(
            f"note: the SMTP settings are not usable ({settings.smtp_error.message}); "
            "--dry-run does not need them, sending for real will stop until they are fixed.",
            file=sys.stderr,
        )
    results = transport_for(settings, dry_run=args.dry_run).send([outgoing])
    return 0 if print_results(results) else 1
