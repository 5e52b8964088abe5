"""``notifier web``: the dashboard for a project (also served by ``notifier schedule``)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from notifier.web.config import TOKEN_VARIABLE

if TYPE_CHECKING:
    from notifier.web.server import WebServer

from notifier.cli import limited
from notifier.web.config import WEB_PORT


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `web` command (the dashboard)."""
    parser = subparsers.add_parser(
        "web",
        help="the dashboard: schedule, runs, output notebooks, emails, Run now",
        description=(
            "Serve the dashboard of the project of JOBS_FILE: jobs and their next runs, "
            "every run with its output notebook and the exact emails that went out, Run now, "
            "the outbox and the mail settings. Binds 127.0.0.1 by default; any other address "
            "needs a token (NOTIFIER_WEB_TOKEN, else one is generated and printed in the URL)."
        ),
    )
    parser.add_argument("jobs_file", nargs="?", default="jobs.yaml", metavar="JOBS_FILE")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=limited(WEB_PORT, "e.g. --port 8765"),
        help="port (default 8765; 0 = any free port)",
    )
    parser.set_defaults(handler=run)


def web_environment(jobs_path: Path) -> dict[str, str]:
    """The environment over the project's .env (NOTIFIER_WEB_HOST/PORT/TOKEN may be in it)."""
    from notifier.project import project_root
    from notifier.settings import read_environment

    folder = jobs_path.resolve().parent if jobs_path.exists() else None
    return read_environment(dotenv_path=project_root(folder) / ".env")


def announce(server: WebServer) -> None:
    """Print the dashboard's URL once on stdout (the journal, under systemd).

    A token generated for this run is in the URL, as Jupyter prints it: nobody else knows
    it. A configured one (NOTIFIER_WEB_TOKEN) never is: whoever set it has it already,
    and whoever reads the log must not get it.
    """
    config = server.config
    if config.token and not config.token_generated:
        print(f"dashboard: {server.base_url} (token from {TOKEN_VARIABLE})", flush=True)
        return
    print(f"dashboard: {server.url}", flush=True)
    if config.token_generated:
        print(
            f"  (a token was generated for this run; set {TOKEN_VARIABLE} to keep one)",
            flush=True,
        )


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier web`; returns the exit code (2: bad address or port in use)."""
    from notifier.cli.context import resolve_jobs_file, settings_for_jobs
    from notifier.notebook.processes import hide_environment_from_children
    from notifier.web.config import web_config
    from notifier.web.server import WebServer
    from notifier.web.state import Dashboard

    hide_environment_from_children()  # Run now executes notebooks from this process
    jobs_path = resolve_jobs_file(args.jobs_file)
    settings = settings_for_jobs(jobs_path, smtp=False)  # the pages work with broken SMTP_*
    config = web_config(args.host, args.port, web_environment(jobs_path))
    dashboard = Dashboard(jobs_path, settings)
    server = WebServer(dashboard, config)  # a port in use: UsageError, exit 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    announce(server)
    try:
        stop.wait()
    finally:
        print("stopping the dashboard", file=sys.stderr, flush=True)
        server.stop()
        dashboard.close()
    return 0
