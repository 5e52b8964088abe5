"""``notifier doctor``: check the SMTP settings step by step, optionally send a test."""

from __future__ import annotations

import argparse

from notifier.config import load_settings
from notifier.doctor import Step, diagnose, format_steps
from notifier.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``doctor`` command to the CLI."""
    parser = subparsers.add_parser(
        "doctor",
        help="check the SMTP settings step by step",
        description=(
            "Check the mail settings from .env and the environment: DNS, TCP, TLS mode, "
            "certificate, server capabilities and login, each with a fix when it fails. "
            "The password is never printed."
        ),
    )
    parser.add_argument(
        "--send-test",
        metavar="ADDRESS",
        dest="send_test",
        help="also send a short test message to ADDRESS and show the server's reply",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print each step; 0 when nothing failed, 1 otherwise."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        steps = [Step("Settings", False, exc.message, exc.fix)]
    else:
        steps = diagnose(settings, send_test_to=getattr(args, "send_test", None))
    print("notifier doctor: checking the mail settings from .env and the environment")
    for line in format_steps(steps):
        print(line)
    failures = sum(1 for step in steps if step.ok is False)
    if failures:
        print(f"{failures} problem{'s' if failures != 1 else ''} found.")
        return 1
    print("All checks passed.")
    return 0
