"""``notifier nodes``: the daemons (and other processes) on this ledger, and their health."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `nodes` command (nodes on the ledger with their leases)."""
    parser = subparsers.add_parser(
        "nodes",
        help="the nodes (daemons) on the ledger: alive, expired or stopped",
        description=(
            "Every node on the ledger: host, role, when it started, its last heartbeat, "
            "whether its lease is valid (alive), ran out (expired: crashed, paused or cut "
            "off; its runs are taken over) or it stopped, the runs it holds, and a hash of "
            "its jobs file. Warns when running daemons have different jobs files. Shows "
            "live nodes and daemons seen in the last day (--all: every node)."
        ),
    )
    parser.add_argument("--all", action="store_true", help="also nodes that ended long ago")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--jobs", default="jobs.yaml", metavar="FILE", help="the project's jobs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Carry out `notifier nodes`; returns the exit code."""
    from notifier.cli.context import resolve_jobs_file, settings_for_jobs
    from notifier.ledger import Ledger, NoLedgerYet
    from notifier.ledger.queries import nodes_report

    settings = settings_for_jobs(resolve_jobs_file(args.jobs), smtp=False)
    try:
        ledger = Ledger(settings.db_url, create=False, lease_seconds=settings.lease_seconds)
    except NoLedgerYet as none:
        if args.json:
            print(json.dumps({"nodes": [], "warnings": []}))
        print(f"no nodes yet: {none.message}", file=sys.stderr if args.json else sys.stdout)
        return 0
    try:
        report = nodes_report(ledger, everything=args.all)
    finally:
        ledger.close()  # a reader: never registered as a node, so nothing is written
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    nodes = report["nodes"]
    if not nodes:
        print("no live nodes (start one with notifier schedule; --all for past ones)")
    else:
        print(
            f"{'HOST':<20} {'PID':>7} {'ROLE':<7} {'STATE':<8} {'STARTED':<25} "
            f"{'HEARTBEAT':>9} {'RUNS':>4}  JOBS FILE"
        )
    for node in nodes:
        beat = f"{node['heartbeat_age_s']:.0f}s ago"
        print(
            f"{node['host'][:20]:<20} {node['pid']:>7} {node['role']:<7} {node['state']:<8} "
            f"{node['started_at'][:25]:<25} {beat:>9} {len(node['running']):>4}  "
            f"{node['jobs_hash_short'] or '-'}"
        )
        for held in node["running"]:
            print(f"    running {held['job']} (slot {held['slot']}, run {held['run_id'][:12]})")
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
