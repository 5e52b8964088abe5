"""The ``notifier`` command line: one module per command in this package."""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NoReturn

from notifier.durations import Limit
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
    "web",
    "show",
    "nodes",
    "pause",
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with notifier's error form: one ``error:`` line and its fix, exit 2.

    Subcommand parsers are of this class too (argparse makes them of the parent's class).
    """

    def error(self, message: str) -> NoReturn:
        """Print the problem and where to read about the command's arguments; exit 2."""
        self.exit(2, f"error: {message}\n  fix: see `{self.prog} --help`\n")


def limited(limit: Limit, hint: str) -> Callable[[str], float]:
    """An argparse ``type`` reading a duration or count within ``limit`` (see durations.py).

    ``--timeout nan`` is refused as ``error: argument --timeout: 'nan' is not a duration
    like ...; allowed: 1s to 1d (e.g. --timeout 600)``, never taken as "no limit".
    """

    def parse(text: str) -> float:
        try:
            return limit.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc} ({hint})") from None

    parse.__name__ = "count" if limit.count else "duration"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command registered."""
    parser = ArgumentParser(
        prog="notifier",
        description="Jupyter notebooks as scheduled email reports and alerts.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"notifier.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"notifier.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


# An aware timestamp in a log argument: 2026-11-26T08:00:00+01:00, 2026-11-26 07:00:00+00:00, ...Z
_TIMESTAMP = re.compile(
    r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)(?![\w:])"
)


class LocalTimeFormatter(logging.Formatter):
    """Every time in a log line in one form: this machine's local time with its offset.

    The line's own time and every aware time among the message's arguments (slots, next
    runs: datetimes, or ISO text in another zone) are shown as ``2026-11-26T08:00:00+01:00``
    in the local zone, the offset computed for that instant, so a DST change shows as a
    changed offset, correctly, rather than as a mix of zones.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """The record's creation time, local, to the second, with its UTC offset."""
        return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="seconds")

    def format(self, record: logging.LogRecord) -> str:
        """The line, with the times among the arguments in the local zone."""
        if isinstance(record.args, tuple) and record.args:
            record = copy.copy(record)  # other handlers keep the original arguments
            record.args = tuple(_local_times(arg) for arg in record.args)
        return super().format(record)


def _local_times(value: object) -> object:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone().isoformat()
    if isinstance(value, str) and ":" in value:
        return _TIMESTAMP.sub(_local_match, value)
    return value


def _local_match(match: re.Match[str]) -> str:
    try:
        moment = datetime.fromisoformat(match.group(0).replace("Z", "+00:00"))
    except ValueError:
        return match.group(0)
    return moment.astimezone().isoformat()


def configure_logging(*, verbose: bool, daemon: bool) -> None:
    """Log to stderr: the daemon each run, one-shot commands only problems (-v: everything)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("notifier-cli")
    handler.setFormatter(LocalTimeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "notifier-cli"]:
        root.removeHandler(old)  # main() called again in the same process
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO if daemon else logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not (daemon or verbose):  # send/run print every SMTP outcome themselves
        logging.getLogger("notifier.smtp").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose, daemon=args.command == "schedule")
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
