"""``notifier schedule``: the daemon that runs jobs.yaml on its schedules."""

from __future__ import annotations

import argparse

from notifier.cli import limited
from notifier.settings import setting_limit
from notifier.web.config import WEB_PORT


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `schedule` command (the scheduling daemon)."""
    parser = subparsers.add_parser(
        "schedule",
        help="run the jobs of jobs.yaml on their schedules (daemon)",
        description=(
            "Run every enabled job of JOBS_FILE on its schedule until SIGTERM or Ctrl-C. "
            "The file is reloaded when it changes; an invalid edit keeps the old schedule."
        ),
    )
    parser.add_argument("jobs_file", nargs="?", default="jobs.yaml", metavar="JOBS_FILE")
    parser.add_argument(
        "--workers",
        type=limited(setting_limit("NOTIFIER_WORKERS"), "e.g. --workers 4"),
        metavar="N",
        help="parallel runs (NOTIFIER_WORKERS)",
    )
    parser.add_argument(
        "--web",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the dashboard too (default: on when it binds a loopback address)",
    )
    parser.add_argument("--web-host", metavar="HOST", help="dashboard address (127.0.0.1)")
    parser.add_argument(
        "--web-port",
        type=limited(WEB_PORT, "e.g. --web-port 8765"),
        metavar="PORT",
        help="dashboard port (8765; 0 = any free port)",
    )
    parser.set_defaults(handler=run)


def start_web(args: argparse.Namespace, jobs_path, daemon):  # noqa: ANN001, ANN201
    """The dashboard in a thread of the daemon (same ledger, same node), or None.

    A port in use is one warning line: the daemon keeps scheduling without it.
    """
    import sys

    from notifier.cli.web import announce, web_environment
    from notifier.errors import UsageError
    from notifier.web.config import web_config
    from notifier.web.server import WebServer
    from notifier.web.state import Dashboard

    if args.web is False:
        return None
    try:
        config = web_config(args.web_host, args.web_port, web_environment(jobs_path))
    except UsageError as error:
        print(f"warning: dashboard not started: {error}", file=sys.stderr, flush=True)
        return None
    if not config.loopback and args.web is None:
        print(
            f"note: dashboard not started: {config.host} is not a loopback address; pass --web "
            "to serve it there (with a token)",
            file=sys.stderr,
            flush=True,
        )
        return None
    dashboard = Dashboard(
        jobs_path,
        daemon.settings,
        ledger=daemon.ledger,
        runner=daemon.runner,
        jobs=daemon.jobs_file,
    )
    try:
        server = WebServer(dashboard, config)
    except UsageError as error:
        print(
            f"warning: dashboard not started: {error.message} The scheduler runs without it.",
            file=sys.stderr,
            flush=True,
        )
        return None
    server.start()
    announce(server)
    return server


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier schedule`; returns the exit code."""
    from notifier.cli.context import announce_outbox, resolve_jobs_file, settings_for_jobs
    from notifier.daemon import Daemon
    from notifier.errors import UsageError
    from notifier.notebook.processes import hide_environment_from_children

    hide_environment_from_children()
    jobs_path = resolve_jobs_file(args.jobs_file)
    settings = settings_for_jobs(jobs_path)
    if args.workers is not None:
        if args.workers < 1:
            raise UsageError("--workers must be at least 1.", "e.g. --workers 4")
        settings = settings.with_overrides(workers=args.workers)
    daemon = Daemon(jobs_path, settings)  # a bad jobs.yaml stops here (exit 2)
    announce_outbox(settings)
    server = start_web(args, jobs_path, daemon)
    try:
        daemon.run_forever()
    finally:
        if server is not None:
            server.stop()
    return 0
