"""The ``notifier`` command line: one module per command under ``notifier.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from notifier.errors import NotifierError

# Each module defines register(subparsers); its subparser sets `handler` to run(args) -> int.
COMMAND_MODULES = (
    "send",
    "doctor",
    "run",
    "validate",
    "list",
    "schedule",
    "history",
    "queue",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="notifier",
        description="Jupyter notebooks as scheduled email reports and alerts.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"notifier.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"notifier.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The daemon logs each run; one-shot commands print their results and log only problems.
    daemon = args.command == "schedule"
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
        stream=sys.stderr,
    )
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if not (daemon or args.verbose):  # send/run print every SMTP outcome themselves
        logging.getLogger("notifier.smtp").setLevel(logging.CRITICAL)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except NotifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
