"""The demo notebooks, run by the worker with a real kernel: their emails read well.

Numbers show in their natural format (no ``885.0`` units, ``29,387.0`` revenue or
``492.800`` ms), and the alert explains itself in enough text that spam filters do not
take it for an image-only message (SpamAssassin's HTML_IMAGE_ONLY_* rules fire for an
HTML part with an image and at most 3,200 bytes of HTML).
"""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from notebooks import WorkerRun, run_worker
from notifier.mail.model import Email, compose
from notifier.notebook.bundle import collect

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SCHEDULED = "2026-03-10T13:15:00+00:00"  # a Tuesday, inside the bundled data


def only_email(run: WorkerRun) -> Email:
    assert run.result["status"] == "ok", run.result
    emails = collect(run.output, run.run_dir / "parts").emails
    assert len(emails) == 1
    return emails[0]


def column(html_body: str, caption: str, number: int) -> list[str]:
    """The texts of column ``number`` (0 = first cell of each row) of the captioned table."""
    table = html_body.split(f">{caption}</caption>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr style=\"background[^>]*>(.*?)</tr>", table)
    return [re.findall(r"<t[dh] [^>]*>([^<]*)</t[dh]>", row)[number] for row in rows]


@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> WorkerRun:
    folder = tmp_path_factory.mktemp("daily")
    return run_worker(folder, NOTEBOOKS / "daily_report.ipynb", {"run_date": "2026-03-10"})


@pytest.fixture(scope="module")
def alert_run(tmp_path_factory) -> WorkerRun:
    folder = tmp_path_factory.mktemp("alert")
    parameters = {"threshold": 150, "scheduled_for": SCHEDULED}
    return run_worker(folder, NOTEBOOKS / "threshold_alert.ipynb", parameters)


def test_report_tables_show_whole_numbers_without_decimals(report_run):
    body = only_email(report_run).html
    assert column(body, "Key figures", 0) == ["revenue", "units"]
    today = column(body, "Key figures", 1)
    assert all(re.fullmatch(r"\d{1,3}(,\d{3})*", value) for value in today), today
    changes = column(body, "Key figures", 2) + column(body, "Key figures", 3)
    assert all(re.fullmatch(r"[+-]\d+\.\d", value) for value in changes), changes
    units, revenue, share = (column(body, "By product", n) for n in (1, 2, 3))
    assert all(re.fullmatch(r"\d{1,3}(,\d{3})*", value) for value in units + revenue)
    assert all(re.fullmatch(r"\d+\.\d", value) for value in share), share
    assert not re.search(r">[\d,]+\.0</td>", body)


def test_alert_explains_itself_in_text(alert_run):
    mail = only_email(alert_run)
    assert mail.subject == "ALERT: checkout p95 latency above 150 ms"
    text = re.sub(r"<[^>]+>", " ", mail.html)
    text = " ".join(text.split())
    assert re.search(r"averaged \d+ ms over the last 15 minutes", text)  # the current value
    assert "above the alert threshold of 150 ms" in text  # the threshold
    for topic in ("What is measured", "What to check", "Recent changes", "Dependencies"):
        assert topic in text
    p95 = column(mail.html, "checkout, last hour in 5-minute intervals", 1)
    assert len(p95) == 12 and all(re.fullmatch(r"\d+", value) for value in p95), p95
    assert len(mail.images) == 1
    # SpamAssassin's HTML_IMAGE_ONLY_* rules: an image and at most 3,200 bytes of HTML
    assert len(mail.html.encode()) > 3200


@pytest.mark.skipif(not shutil.which("spamassassin"), reason="spamassassin is not installed")
@pytest.mark.parametrize("sender", ["notifier@localhost", "Notifier Alerts <alerts@example.com>"])
def test_alert_scores_zero_in_spamassassin(alert_run, tmp_path, sender):
    mail = only_email(alert_run)
    message = compose(replace(mail, to=["oncall@example.com"]), default_sender=sender)
    proc = subprocess.run(
        ["spamassassin", "-L", "-t"],  # local tests only: no network, no Bayes
        input=message.data,
        capture_output=True,
        timeout=120,
    )
    report = proc.stdout.decode("utf-8", "replace")
    scored = re.findall(r"^\s*(-?\d+\.\d+) (\w+)", report, re.M)
    assert scored, report[-2000:]
    assert [(points, rule) for points, rule in scored if float(points) > 0] == [], report[-2000:]
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    assert parsed["To"] == "oncall@example.com"


def test_the_personalised_demo_mails_each_manager_their_own_region(tmp_path: Path) -> None:
    run = run_worker(tmp_path, NOTEBOOKS / "personalised_report.ipynb", {"run_date": "2026-03-10"})
    assert run.result["status"] == "ok", run.result
    emails = collect(run.output, run.run_dir / "parts").emails
    managers = (NOTEBOOKS / "data" / "managers.csv").read_text().splitlines()[1:]
    assert len(emails) == len(managers) == 4
    charts = set()
    for mail, line in zip(emails, managers, strict=True):
        region, manager, address = line.split(",")
        assert mail.to == [f"{manager} <{address}>"] and mail.key == f"region-{region.lower()}"
        assert mail.subject.startswith(f"{region} sales 2026-03-10")
        assert f"<b>{region}</b>" in (mail.html or "") or f"<strong>{region}</strong>" in (
            mail.html or ""
        )
        charts |= {image.part.data for image in mail.images}
        compose(mail, default_sender="reports@example.com")  # each one can be sent
    assert len(charts) == 1  # one chart, shared by every email
