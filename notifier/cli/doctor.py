"""``notifier doctor``: check the SMTP settings step by step, optionally send a test."""

from __future__ import annotations

import argparse

from notifier.errors import ConfigError
from notifier.mail.doctor import Step, diagnose, format_steps


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
    """Print each step; 0 when nothing failed, 2 for bad settings, 1 for other failures."""
    from notifier.cli.context import settings_from_env
    from notifier.project import project_root

    dotenv = project_root() / ".env"
    try:
        settings = settings_from_env()
    except ConfigError as exc:
        steps = [Step("Settings", False, exc.message, exc.fix)]
        settings = None
    else:
        steps = diagnose(settings, send_test_to=getattr(args, "send_test", None))
    source = str(dotenv) if dotenv.is_file() else f"the environment (no {dotenv})"
    print(f"notifier doctor: checking the mail settings from {source}")
    for line in format_steps(steps):
        print(line)
    failures = sum(1 for step in steps if step.ok is False)
    if failures:
        print(f"{failures} problem{'s' if failures != 1 else ''} found.")
        return ConfigError.exit_code if settings is None else 1
    print("All checks passed.")
    return 0
