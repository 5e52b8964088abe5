"""Dashboard speed on a big ledger: 100,000 runs and 300,000 deliveries.

    python benchmarks/bench_web.py [--runs 100000]

Fills a SQLite ledger with bulk inserts (100,000 runs, one email each to 3 recipients:
100,000 messages, 300,000 recipient rows and 300,000 delivery-log rows), serves the
dashboard with uvicorn in a thread, and measures with a real HTTP client (httpx, one
keep-alive connection): median and p95 of the runs page (first page, a deep page, a
filtered deep page), a run's page and the JSON API. Goal: under 200 ms each.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from notifier.ledger import Ledger  # noqa: E402
from notifier.ledger.queue import encode_spec  # noqa: E402
from notifier.ledger.schema import (  # noqa: E402
    deliveries_table,
    messages_table,
    recipients_table,
    runs_table,
)
from notifier.settings import Settings  # noqa: E402
from notifier.web.config import WebConfig  # noqa: E402
from notifier.web.server import WebServer  # noqa: E402
from notifier.web.state import Dashboard  # noqa: E402

GOAL_MS = 200.0
JOBS = [f"job-{i}" for i in range(8)]
STATUSES = ["succeeded"] * 85 + ["failed"] * 8 + ["skipped"] * 5 + ["suppressed"] * 2
NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
CHUNK = 5000


def fill(ledger: Ledger, count: int) -> list[str]:
    """Bulk-insert ``count`` runs, each with one email to 3 recipients; returns run ids."""
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    now = datetime.now(timezone.utc)
    spec = encode_spec(
        {
            "v": 1,
            "subject": "Daily sales",
            "sender": "reports@example.com",
            "to": ["a@example.com", "b@example.com"],
            "cc": ["c@example.com"],
            "reply_to": [],
            "headers": {},
            "date": "Thu, 26 Nov 2026 08:00:00 +0100",
            "message_id": "<bench@example.com>",
            "html": "<p><b>Revenue</b> is up 4 %</p>" * 20,
            "text": None,
            "images": [],
            "attachments": [],
        }
    )
    run_ids = []
    message_pk = 0
    with ledger.db.engine.begin() as conn:
        for base in range(0, count, CHUNK):
            runs, messages, recipients, log = [], [], [], []
            for i in range(base, min(base + CHUNK, count)):
                run_id = secrets.token_hex(16)
                run_ids.append(run_id)
                slot = start + timedelta(minutes=5 * i)
                status = rng.choice(STATUSES)
                runs.append(
                    {
                        "id": i + 1,
                        "run_id": run_id,
                        "job": JOBS[i % len(JOBS)],
                        "slot": slot,
                        "slot_kind": "scheduled",
                        "trigger": "schedule",
                        "status": status,
                        "attempt": 1,
                        "owner": "bench:1:x",
                        "claimed_at": slot,
                        "started_at": slot,
                        "finished_at": slot + timedelta(seconds=4),
                        "duration_s": 4.0,
                        "error": "cell 3 raised ValueError: late data"
                        if status == "failed"
                        else None,
                        "output_path": None,
                        "recipients": '["a@example.com", "b@example.com"]',
                        "notes": "sent: Daily sales",
                        "parameters": '{"days": 14}',
                    }
                )
                message_pk += 1
                messages.append(
                    {
                        "id": message_pk,
                        "run_id": run_id,
                        "email_key": "h:bench",
                        "purpose": "report",
                        "message_id": "<bench@example.com>",
                        "subject": "Daily sales",
                        "sender": "reports@example.com",
                        "size": 2000,
                        "spec": spec,
                        "transport": "default",
                        "on_unknown": "skip",
                        "created_at": slot,
                        "expires_at": slot + timedelta(days=1),
                    }
                )
                for rcpt in ("a@example.com", "b@example.com", "c@example.com"):
                    recipients.append(
                        {
                            "message_pk": message_pk,
                            "run_id": run_id,
                            "recipient": rcpt,
                            "status": "delivered",
                            "attempts": 1,
                            "next_attempt_at": None,
                            "last_attempt_at": slot,
                            "code": 250,
                            "reply": "2.0.0 Ok: queued",
                            "updated_at": now,
                        }
                    )
                    log.append(
                        {
                            "run_id": run_id,
                            "attempt": 1,
                            "email_key": "h:bench",
                            "message_id": "<bench@example.com>",
                            "recipient": rcpt,
                            "status": "delivered",
                            "code": 250,
                            "reply": "2.0.0 Ok: queued",
                            "at": slot,
                        }
                    )
            conn.execute(runs_table.insert(), runs)
            conn.execute(messages_table.insert(), messages)
            conn.execute(recipients_table.insert(), recipients)
            conn.execute(deliveries_table.insert(), log)
    with ledger.db.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return run_ids


def measure(client: httpx.Client, path: str, rounds: int) -> tuple[float, float]:
    """(median, p95) in milliseconds of ``rounds`` GETs after 3 warm-up requests."""
    for _ in range(3):
        assert client.get(path).status_code == 200, path
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, (path, answer.status_code)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        root = Path(tmp)
        (root / "nb.ipynb").write_text(NOTEBOOK)
        jobs = "jobs:\n" + "".join(
            f"  - name: {name}\n    notebook: nb.ipynb\n    schedule: {{every: 5m}}\n"
            for name in JOBS
        )
        (root / "jobs.yaml").write_text(jobs)
        settings = Settings(
            db_url=f"sqlite:///{root / 'ledger.db'}",
            runs_dir=root / "runs",
            outbox_dir=root / "outbox",
        )
        ledger = Ledger(settings.db_url)
        began = time.perf_counter()
        run_ids = fill(ledger, args.runs)
        filled = time.perf_counter() - began
        ledger.close()
        print(
            f"ledger: {args.runs:,} runs, {args.runs:,} messages, {3 * args.runs:,} recipient "
            f"rows, {3 * args.runs:,} delivery-log rows; filled in {filled:.1f} s",
            flush=True,
        )
        dashboard = Dashboard(root / "jobs.yaml", settings)
        server = WebServer(dashboard, WebConfig(port=0)).start()
        pages = [
            ("runs page, newest", "/runs"),
            ("runs page, deep (page 1,000)", "/runs?page=1000"),
            ("runs page, job + status filter, deep", "/runs?job=job-3&status=failed&page=20"),
            ("run page (3 recipients, email view)", f"/runs/{run_ids[len(run_ids) // 2]}"),
            ("JSON API /api/runs (50 runs)", "/api/runs?limit=50&offset=5000"),
            ("jobs page", "/"),
        ]
        worst = 0.0
        try:
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                print(f"\n{'page':<40} {'median':>9} {'p95':>9}")
                for label, path in pages:
                    median, p95 = measure(client, path, args.rounds)
                    if label != "jobs page":
                        worst = max(worst, p95)
                    print(f"{label:<40} {median:>7.1f}ms {p95:>7.1f}ms", flush=True)
        finally:
            server.stop()
            dashboard.close()
        verdict = "met" if worst < GOAL_MS else "NOT met"
        print(
            f"\ngoal: runs and run pages under {GOAL_MS:.0f} ms: {verdict} (worst p95 {worst:.1f} ms)"
        )
        return 0 if worst < GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
