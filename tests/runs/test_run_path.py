"""notifier.notebook.execute with real Jupyter kernels: execute, collect, deliver, fail, time out, keep secrets.

Kernel runs are slow (~4 s each), so runs that several tests inspect are module-scoped
fixtures. Delivery goes to the memory or outbox transport, which build the real MIME.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path

import psutil
import pytest

from notebooks import kernels_of_run, write_notebook
from notifier.errors import RunError
from notifier.ledger import Ledger
from notifier.mail.model import Outgoing
from notifier.mail.transport.memory import MemoryTransport
from notifier.mail.transport.outbox import OutboxTransport
from notifier.notebook.bundle import EMAIL_MIME
from notifier.notebook.execute import Execution, RunRequest, _finish_execution, execute
from notifier.runs.path import RunPath, RunResult, adhoc_job
from notifier.settings import parse_settings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UTC = timezone.utc
SCHEDULED = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)
PASSWORD = "hunter2-Sup3r-s3cret"
BIG = bytes(range(256)) * 8192  # 2 MiB


def parse(out: Outgoing) -> EmailMessage:
    return email.message_from_bytes(out.data, policy=email.policy.default)


def settings_in(folder: Path, **extra: str):
    return parse_settings(
        {"NOTIFIER_RUNS_DIR": str(folder / "runs"), "NOTIFIER_OUTBOX": str(folder / "outbox")}
        | extra
    )


@dataclass
class Outcome:
    """What a run through the one run path did (for the assertions below)."""

    result: RunResult
    ledger_url: str

    @property
    def status(self) -> str:
        return self.result.run.status

    @property
    def error(self) -> str | None:
        return self.result.run.error

    @property
    def execution(self) -> Execution:
        assert self.result.execution is not None
        return self.result.execution

    @property
    def run_id(self) -> str:
        return self.result.run.run_id

    @property
    def ok(self) -> bool:
        return self.status in {"succeeded", "skipped"}

    def history(self) -> list[dict]:
        from notifier.ledger.queries import run_rows

        with Ledger(self.ledger_url) as ledger:
            return run_rows(ledger, ledger.history(limit=None))


def run(request: RunRequest, settings, transport, *, on_failure=None, **options) -> Outcome:
    """``request`` through the one run path (ad-hoc job, ledger next to the runs folder)."""
    url = f"sqlite:///{settings.runs_dir.parent / 'ledger.db'}"
    job = adhoc_job(
        request.notebook,
        name=request.job_name or Path(request.notebook).stem,
        parameters=request.parameters,
        to=request.to,
        cc=request.cc,
        bcc=request.bcc,
        on_failure=on_failure,
        timeout=request.timeout,
        cell_timeout=request.cell_timeout,
        **options,
    )
    with Ledger(url) as ledger:
        path = RunPath(settings, ledger, transports=lambda _kind: transport)
        if request.scheduled_for is not None:
            result = path.run_slot(job, request.scheduled_for)
            assert result is not None
        else:
            result = path.run_now(job)
    return Outcome(result, url)


def email_bundles(notebook: Path) -> list[dict]:
    data = json.loads(notebook.read_text(encoding="utf-8"))
    return [
        output["data"][EMAIL_MIME]
        for cell in data["cells"]
        for output in cell.get("outputs", [])
        if EMAIL_MIME in output.get("data", {})
    ]


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting to be reaped counts as gone)."""
    if not psutil.pid_exists(pid):
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- a successful report run -------------------------------------------------------------------

REPORT_PARAMETERS = """
region = "EU"
threshold = 10
regions = ["EU"]
"""

REPORT_CELLS = [
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    from notifier import report
    """,
    """
    managers = {"EU": "Ève Dupont <eve@example.com>", "US": "sam@example.com"}
    data = pd.DataFrame({"region": ["EU", "US"], "revenue": [1234.5, 99.0], "orders": [12, 3]})
    for r in regions:
        rows = data[data.region == r].reset_index(drop=True)
        mail = report.email(f"Sales {r} — Zürich ✓ ({threshold})", to=managers[r])
        mail.table(rows)
        mail.attach(rows, f"ventes-{r}.csv")
    """,
    """
    summary = report.email(
        f"Summary {region} {threshold!r} {regions!r} "
        f"run={run_id} job={job_name} at={scheduled_for}"
    )
    summary.markdown("**Grüße** aus Zürich 📈 — 東京")
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3], [2, 1, 3])
    summary.chart(fig, attach=True, filename="trend.png")
    summary.attach(data, "données.csv")
    summary.attach(bytes(range(256)) * 8192, "big.bin")
    """,
    # a later cell changes an email displayed earlier: its output is updated in place
    'summary.text("added in a later cell")',
]


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    notebook = write_notebook(base / "sales.ipynb", *REPORT_CELLS, parameters=REPORT_PARAMETERS)
    settings = settings_in(base)
    transport = MemoryTransport()
    request = RunRequest(
        notebook,
        parameters={"region": "US", "threshold": 42, "regions": ["EU", "US"]},
        job_name="sales-daily",
        to=["boss@example.com"],
        cc=["team@example.com"],
        bcc=["audit@example.com"],
        scheduled_for=SCHEDULED,
    )
    outcome = run(request, settings, transport)
    return outcome, transport, settings


def test_report_run_succeeds_and_archives(report_run):
    outcome, transport, settings = report_run
    execution = outcome.execution
    assert (outcome.status, outcome.error) == ("succeeded", None), (
        execution.run_dir / "worker.log"
    ).read_text()
    assert outcome.ok
    assert execution.run_id == outcome.run_id
    assert (
        execution.run_dir
        == (settings.runs_dir / "sales-daily" / f"20240506T080000Z-{outcome.run_id}").resolve()
    )
    for name in ("output.ipynb", "output.html", "worker.log", "result.json", "spec.json"):
        assert (execution.run_dir / name).is_file(), name
    (row,) = outcome.history()
    assert (row["job"], row["run_id"], row["status"]) == (
        "sales-daily",
        outcome.run_id,
        "succeeded",
    )
    assert [d["subject"] for d in row["deliveries"]] == [
        m.subject for m in transport.sent for _ in m.recipients
    ]
    assert {d["status"] for d in row["deliveries"]} == {"delivered"}
    assert {d["purpose"] for d in row["deliveries"]} == {"report"}  # no failure email


def test_the_runs_files_are_kept_in_the_ledger_for_every_node(report_run):
    outcome, _, _ = report_run
    execution = outcome.execution
    with Ledger(outcome.ledger_url) as other_node:
        assert other_node.run_file_names(outcome.run_id) == ["output.html", "worker.log"]
        html = other_node.run_file(outcome.run_id, "output.html")
        assert html == execution.output_html.read_bytes() and b"Summary US" in html
        assert (
            other_node.run_file(outcome.run_id, "worker.log")
            == (execution.run_dir / "worker.log").read_bytes()
        )


def test_parameters_and_run_metadata_reach_the_notebook(report_run):
    outcome, transport, _ = report_run
    subjects = [out.subject for out in transport.sent]
    assert subjects == [
        "Sales EU — Zürich ✓ (42)",
        "Sales US — Zürich ✓ (42)",
        f"Summary US 42 ['EU', 'US'] run={outcome.run_id} job=sales-daily "
        "at=2024-05-06T08:00:00+00:00",
    ]


def test_each_email_has_its_own_recipients_and_the_rest_get_the_defaults(report_run):
    _, transport, _ = report_run
    eu, us, summary = transport.sent
    assert eu.recipients == ("eve@example.com",)
    assert parse(eu)["To"].addresses[0].display_name == "Ève Dupont"
    assert parse(eu)["Cc"] is None
    assert us.recipients == ("sam@example.com",)
    assert summary.recipients == ("boss@example.com", "team@example.com", "audit@example.com")
    message = parse(summary)
    assert (message["To"], message["Cc"], message["Bcc"]) == (
        "boss@example.com",
        "team@example.com",
        None,
    )
    assert b"audit@example.com" not in summary.data


def test_collected_parts_are_exact(report_run):
    outcome, transport, _ = report_run
    emails = outcome.execution.emails
    assert [len(m.images) for m in emails] == [0, 0, 1]
    assert [[a.filename for a in m.attachments] for m in emails] == [
        ["ventes-EU.csv"],
        ["ventes-US.csv"],
        ["trend.png", "données.csv", "big.bin"],
    ]
    assert emails[0].attachments[0].data == b"region,revenue,orders\nEU,1234.5,12\n"
    assert emails[1].attachments[0].data == b"region,revenue,orders\nUS,99.0,3\n"

    message = parse(transport.sent[2])
    inline = [p for p in message.walk() if p.get("Content-ID")]
    assert len(inline) == 1 and inline[0].get_content_type() == "image/png"
    png = inline[0].get_content()
    assert png.startswith(PNG_SIGNATURE)
    html_body = message.get_body(preferencelist=("html",)).get_content()
    assert f'src="cid:{inline[0]["Content-ID"].strip("<>")}"' in html_body
    files = {p.get_filename(): p for p in message.iter_attachments()}
    assert list(files) == ["trend.png", "données.csv", "big.bin"]
    assert files["trend.png"].get_content() == png
    assert files["données.csv"].get_content_type() == "text/csv"
    assert files["données.csv"].get_payload(decode=True) == (
        b"region,revenue,orders\nEU,1234.5,12\nUS,99.0,3\n"
    )
    assert files["big.bin"].get_payload(decode=True) == BIG


def test_unicode_content_end_to_end(report_run):
    _, transport, _ = report_run
    message = parse(transport.sent[2])
    html_body = message.get_body(("html",)).get_content()
    assert "<p><strong>Grüße</strong> aus Zürich 📈 — 東京</p>" in html_body
    assert html_body.count("<p>added in a later cell</p>") == 1
    assert "Grüße aus Zürich 📈 — 東京" in message.get_body(("plain",)).get_content()
    assert parse(transport.sent[0])["Subject"] == "Sales EU — Zürich ✓ (42)"
    assert transport.sent[0].data.isascii()


def test_output_notebook_records_the_emails_and_stays_small(report_run):
    outcome, _, _ = report_run
    execution = outcome.execution
    assert execution.output_notebook.stat().st_size < 200_000
    bundles = email_bundles(execution.output_notebook)
    assert len({b["email_id"] for b in bundles}) == 3
    latest = {b["email_id"]: b for b in bundles}
    by_subject = {b["subject"]: b for b in latest.values()}
    summary = by_subject[
        f"Summary US 42 ['EU', 'US'] run={outcome.run_id} job=sales-daily "
        "at=2024-05-06T08:00:00+00:00"
    ]
    assert summary["to"] == []  # the runner adds the job's recipients; the archive says so
    big = summary["attachments"][2]
    assert big["filename"] == "big.bin"
    assert big["size"] == len(BIG)
    assert big["sha256"] == hashlib.sha256(BIG).hexdigest()
    assert "data" not in big
    assert (execution.run_dir / "parts" / big["file"]).read_bytes() == BIG
    for entry in [*summary["images"], *summary["attachments"]]:
        stored = execution.run_dir / "parts" / entry["file"]
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == entry["sha256"]
    # the archived html shows the emails too (the preview is part of the output), with the
    # real recipients of the email that named none
    archived = execution.output_html.read_text(encoding="utf-8")
    assert "Sales EU — Zürich ✓ (42)" in archived
    assert ">boss@example.com</td>" in archived and "job&#x27;s recipients" not in archived


def test_worker_log_has_no_tcp_encryption_warning(report_run):
    outcome, _, _ = report_run
    log_text = (outcome.execution.run_dir / "worker.log").read_text()
    assert "without encryption" not in log_text
    assert "CurveZMQ" not in log_text


# -- runs refused before any kernel starts -----------------------------------------------------


@pytest.fixture
def simple_notebook(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "simple.ipynb",
        "from notifier import report\nreport.email(region)",
        parameters='region = "EU"\nlimit: int = 5',
    )


def test_unknown_parameter_is_refused_before_the_kernel_starts(tmp_path, simple_notebook):
    settings = settings_in(tmp_path)
    request = RunRequest(simple_notebook, parameters={"regoin": "US", "limit": 3})
    with pytest.raises(RunError) as raised:
        execute(request, settings)
    assert raised.value.message == (
        "simple.ipynb does not declare the parameter(s) regoin; it declares: region, limit."
    )
    assert not settings.runs_dir.exists()


def test_parameter_without_parameters_cell_is_refused(tmp_path):
    notebook = write_notebook(tmp_path / "plain.ipynb", "x = 1", parameters=None)
    settings = settings_in(tmp_path)
    with pytest.raises(RunError, match="has no cell tagged 'parameters'") as raised:
        execute(RunRequest(notebook, parameters={"x": 2}), settings)
    assert "(given: x)" in raised.value.message
    assert "add the tag 'parameters'" in raised.value.fix
    assert not settings.runs_dir.exists()


def test_missing_notebook_is_refused(tmp_path):
    settings = settings_in(tmp_path)
    with pytest.raises(RunError, match="does not exist"):
        execute(RunRequest(tmp_path / "nope.ipynb"), settings)
    with pytest.raises(RunError, match="is not a Jupyter notebook"):
        (tmp_path / "broken.ipynb").write_text("{not json", encoding="utf-8")
        execute(RunRequest(tmp_path / "broken.ipynb"), settings)
    assert not settings.runs_dir.exists()


@pytest.mark.parametrize(
    "password, value",
    [
        (PASSWORD, f"x{PASSWORD}y"),
        (PASSWORD, ["EU", {"nested": PASSWORD}]),
        ('pa"ss\\wörd', 'prefix pa"ss\\wörd'),  # json.dumps would escape all three
        ("tab\there", "a tab\there"),
    ],
    ids=["plain", "nested", "quote-backslash-umlaut", "tab"],
)
def test_parameter_holding_the_password_is_refused(tmp_path, simple_notebook, password, value):
    settings = settings_in(
        tmp_path, SMTP_HOST="127.0.0.1", SMTP_USER="u@example.com", SMTP_PASSWORD=password
    )
    request = RunRequest(simple_notebook, parameters={"region": value})
    with pytest.raises(RunError, match="contains the SMTP password") as raised:
        execute(request, settings)
    assert password not in str(raised.value)
    assert not settings.runs_dir.exists()


def test_a_run_with_the_password_as_parameter_is_refused_before_it_is_claimed(
    tmp_path, simple_notebook
):
    """``notifier run nb.ipynb -p region PASSWORD``: refused before the ledger (which keeps
    a run's parameters for history, the API and the run page) records anything."""
    (tmp_path / ".env").write_text(
        f"SMTP_HOST=127.0.0.1\nSMTP_USER=u@example.com\nSMTP_PASSWORD={PASSWORD}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "NOTIFIER_"))}
    command = [sys.executable, "-m", "notifier", "run", "simple.ipynb", "-p", "region"]
    refused = subprocess.run(
        [*command, f"x{PASSWORD}", "--to", "a@example.com", "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "contains the SMTP password" in refused.stderr
    assert PASSWORD not in refused.stdout + refused.stderr
    ledger = tmp_path / "notifier.db"
    assert not ledger.exists() or PASSWORD.encode() not in ledger.read_bytes()
    if ledger.exists():
        with Ledger(f"sqlite:///{ledger}") as opened:
            assert opened.history() == []


def test_a_scheduled_slot_with_the_password_as_parameter_fails_without_storing_it(
    tmp_path, simple_notebook
):
    """jobs.yaml ``parameters: {region: ${SMTP_PASSWORD}}``: the slot ends failed with the
    cause and a failure email; the ledger keeps the parameters with the password hidden."""
    settings = settings_in(
        tmp_path, SMTP_HOST="127.0.0.1", SMTP_USER="u@example.com", SMTP_PASSWORD=PASSWORD
    )
    job = adhoc_job(
        simple_notebook, name="leaky", parameters={"region": PASSWORD}, to=["a@example.com"]
    )
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    transport = MemoryTransport()
    with Ledger(url) as ledger:
        result = RunPath(settings, ledger, transports=lambda _kind: transport).run_slot(
            job, SCHEDULED
        )
        assert result is not None
        stored = ledger.get(result.run.run_id)
    assert stored is not None and stored.status == "failed"
    assert "contains the SMTP password" in (stored.error or "")
    assert stored.parameters == {"region": "***"}
    assert [m.subject for m in transport.sent] == [
        "[notifier] FAILED: leaky: A notebook parameter contains the SMTP password; "
        "parameters are saved in the output notebook."
    ]
    assert PASSWORD.encode() not in (tmp_path / "ledger.db").read_bytes()
    assert not settings.runs_dir.exists()


def test_an_invalid_email_fails_the_run_before_anything_is_sent(tmp_path):
    notebook = write_notebook(
        tmp_path / "two.ipynb",
        """
        from notifier import report
        report.email("good", to="a@example.com").text("x")
        report.email("bad", to="bob@").text("x")
        report.email("line\\nbreak", to="c@example.com").text("x")
        """,
    )
    transport = MemoryTransport()
    outcome = run(RunRequest(notebook, to=["boss@example.com"]), settings_in(tmp_path), transport)
    assert outcome.status == "failed"
    # the real cause: which email, which field
    assert outcome.error == (
        "an email cannot be sent: 'bob@' is not a valid email address (to)."
    ), outcome.error
    # nothing of the run went out; the failure email did, with a one-line subject
    assert [m.subject for m in transport.sent] == [
        "[notifier] FAILED: two: an email cannot be sent: 'bob@' is not a valid email address (to)."
    ]
    assert transport.sent[0].recipients == ("boss@example.com",)
    (row,) = outcome.history()
    assert row["status"] == "failed"
    assert [(d["purpose"], d["recipient"], d["status"]) for d in row["deliveries"]] == [
        ("failure", "boss@example.com", "delivered")
    ]


def test_a_line_break_in_a_subject_fails_the_run_with_the_cause(tmp_path):
    notebook = write_notebook(
        tmp_path / "crlf.ipynb",
        """
        from notifier import report
        report.email("Sales\\r\\nBcc: everyone@example.com", to="a@example.com").text("x")
        """,
    )
    transport = MemoryTransport()
    outcome = run(RunRequest(notebook, to=["boss@example.com"]), settings_in(tmp_path), transport)
    assert outcome.status == "failed"
    assert outcome.error is not None and "subject contains a line break" in outcome.error
    (failure,) = transport.sent
    assert "\n" not in failure.subject and "\r" not in failure.subject
    assert failure.subject.startswith("[notifier] FAILED: crlf: an email cannot be sent: ")
    assert "everyone@example.com" not in failure.recipients


@pytest.mark.parametrize("case", ["missing-part", "no-output-notebook"])
def test_unreadable_output_is_a_failure_with_a_failure_email(tmp_path, case):
    # What the worker left behind, without a kernel: result.json says ok, but the emails
    # cannot be read back. The run must fail with the cause, and tell the failure recipients.
    run_dir = tmp_path / "run"
    (run_dir / "parts").mkdir(parents=True)
    (run_dir / "result.json").write_text('{"status": "ok", "timings": {}}')
    if case == "missing-part":
        bundle = {
            "version": 1, "email_id": "e1", "revision": 1, "subject": "S", "to": ["a@example.com"],
            "cc": [], "bcc": [], "reply_to": [], "sender": None, "html": "<p>x</p>", "images": [],
            "attachments": [
                {"filename": "a.csv", "mime_type": "text/csv", "size": 1, "sha256": "0" * 64,
                 "file": "gone.csv"}
            ],
        }  # fmt: skip
        notebook = write_notebook(run_dir / "output.ipynb", "1")
        data = json.loads(notebook.read_text())
        data["cells"][1]["outputs"] = [
            {
                "output_type": "display_data",
                "metadata": {},
                "data": {EMAIL_MIME: bundle, "text/plain": "S"},
            }
        ]
        notebook.write_text(json.dumps(data))
    request = RunRequest(tmp_path / "job.ipynb", to=["boss@example.com"])
    execution = Execution(request, "r1", run_dir, "failed")
    _finish_execution(execution, settings_in(tmp_path), timed_out=False)

    assert execution.status == "failed"
    assert execution.emails == []
    expected = {
        "missing-part": "the output notebook could not be read: A part of an email could not "
        f"be read back: [Errno 2] No such file or directory: '{run_dir / 'parts' / 'gone.csv'}'.",
        "no-output-notebook": "the worker wrote no output notebook",
    }[case]
    assert execution.error.startswith(expected), execution.error
    assert execution.failure["kind"] == "collect"


def test_emails_hidden_from_the_output_are_still_sent_exactly_once(tmp_path):
    # The output notebook does not show an email built in a %%capture cell, nor one whose
    # output clear_output() removed; both are sent all the same, once, in their latest form.
    notebook = write_notebook(
        tmp_path / "hidden.ipynb",
        """
        from IPython.display import clear_output
        from notifier import report
        shown = report.email("Shown", to="shown@example.com")
        shown.text("shown as usual")
        """,
        """
        %%capture
        captured = report.email("Captured", to="captured@example.com")
        captured.text("built under capture")
        """,
        """
        cleared = report.email("Cleared", to="cleared@example.com")
        cleared.text("built, then cleared")
        clear_output()
        """,
        'captured.text("changed in a later cell")',
        "shown  # shown again in a later cell: still one email",
    )
    settings = settings_in(tmp_path)
    transport = OutboxTransport(settings.outbox_dir)
    outcome = run(RunRequest(notebook, to=["boss@example.com"]), settings, transport)

    assert (outcome.status, outcome.error) == ("succeeded", None)
    subjects = {b["subject"] for b in email_bundles(outcome.execution.output_notebook)}
    assert subjects == {"Shown"}  # the other two left no trace in the output notebook
    sent = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(settings.outbox_dir.glob("*.eml"))
    ]
    by_subject = {message["Subject"]: message for message in sent}
    assert sorted(message["Subject"] for message in sent) == ["Captured", "Cleared", "Shown"]
    assert [m.subject for m in outcome.execution.emails] == ["Shown", "Captured", "Cleared"]
    assert [w for w in outcome.execution.warnings if "not shown" in w] == [
        f"email {subject!r} is sent but not shown in the output notebook (its output was "
        "captured with %%capture or removed with clear_output()); to show it, end a later "
        "cell with it"
        for subject in ("Captured", "Cleared")
    ]
    assert by_subject["Captured"]["To"] == "captured@example.com"
    captured = by_subject["Captured"].get_body(("html",)).get_content()
    assert "built under capture" in captured and "changed in a later cell" in captured
    assert "built, then cleared" in by_subject["Cleared"].get_body(("html",)).get_content()
    (row,) = outcome.history()
    assert sorted(d["subject"] for d in row["deliveries"]) == ["Captured", "Cleared", "Shown"]


# -- skip, failure, timeout, dead kernel -------------------------------------------------------


def test_skip_sends_nothing_and_stops_the_notebook(tmp_path):
    notebook = write_notebook(
        tmp_path / "alert.ipynb",
        """
        from pathlib import Path
        from notifier import report
        mail = report.email("Should not be sent", to="x@example.com")
        mail.text("nothing")
        """,
        'report.skip("no new rows since 2024-05-05")',
        'Path("after-skip.txt").write_text("ran")',
    )
    transport = MemoryTransport()
    outcome = run(RunRequest(notebook, to=["boss@example.com"]), settings_in(tmp_path), transport)
    assert outcome.status == "skipped"
    assert outcome.ok
    assert outcome.execution.skip_reason == "no new rows since 2024-05-05"
    assert outcome.error is None
    assert transport.sent == []
    assert not (tmp_path / "after-skip.txt").exists()
    (row,) = outcome.history()
    assert (row["status"], row["notes"], row["deliveries"]) == (
        "skipped",
        "no new rows since 2024-05-05",
        [],
    )


@pytest.mark.parametrize(
    "where", ["try-except-exception", "try-except-baseexception", "captured-cell"]
)
def test_skip_cannot_be_swallowed_or_hidden_by_the_notebook(tmp_path, where):
    # report.skip() inside the notebook's own `try: ... except Exception:` stops it at once;
    # a skip caught by `except BaseException:`, or in a %%capture cell (which swallows every
    # exception, and the skip marker with it), still skips, and no later cell runs
    skipping = {
        "try-except-exception": """
            try:
                report.skip("nothing new")
            except Exception:
                pass
            Path("same-cell.txt").write_text("ran")
            """,
        "try-except-baseexception": """
            try:
                report.skip("nothing new")
            except BaseException:
                pass
            """,
        "captured-cell": """
            %%capture
            report.skip("nothing new")
            """,
    }[where]
    notebook = write_notebook(
        tmp_path / "alert.ipynb",
        """
        from pathlib import Path
        from notifier import report
        mail = report.email("Should not be sent", to="x@example.com")
        mail.text("nothing")
        """,
        skipping,
        'Path("after-skip.txt").write_text("ran")',
    )
    settings = settings_in(tmp_path)
    transport = OutboxTransport(settings.outbox_dir)
    outcome = run(RunRequest(notebook, to=["boss@example.com"]), settings, transport)

    assert (outcome.status, outcome.error) == ("skipped", None)
    assert outcome.execution.skip_reason == "nothing new"
    assert not (tmp_path / "same-cell.txt").exists()
    assert not (tmp_path / "after-skip.txt").exists()
    assert not list(settings.outbox_dir.glob("*.eml"))
    (row,) = outcome.history()
    assert (row["status"], row["notes"], row["deliveries"]) == ("skipped", "nothing new", [])


def test_cell_error_fails_the_run_and_mails_the_traceback(tmp_path):
    notebook = write_notebook(
        tmp_path / "failing.ipynb",
        """
        from pathlib import Path
        from notifier import report
        mail = report.email("Partial report", to="x@example.com")
        mail.text("half done")
        """,
        """
        def load_rows():
            raise ValueError("boom: bad data 42")

        rows = load_rows()
        """,
        'Path("after-error.txt").write_text("ran")',
    )
    transport = MemoryTransport()
    request = RunRequest(notebook, to=["boss@example.com"])
    outcome = run(request, settings_in(tmp_path), transport, on_failure=["ops@example.com"])
    execution = outcome.execution

    assert outcome.status == "failed"
    assert not outcome.ok
    assert outcome.error == "cell 3 raised ValueError: boom: bad data 42"
    assert execution.emails == []
    assert not (tmp_path / "after-error.txt").exists()
    assert len(transport.sent) == 1  # the failure email only, not the partial report
    failure = transport.sent[0]
    assert failure.recipients == ("ops@example.com",)
    assert failure.subject == (
        "[notifier] FAILED: failing: cell 3 raised ValueError: boom: bad data 42"
    )
    message = parse(failure)
    body = message.get_body(preferencelist=("html",)).get_content()
    assert "<h3>Failing cell</h3>" in body
    assert "raise ValueError(&quot;boom: bad data 42&quot;)" in body
    assert "rows = load_rows()" in body
    assert "<h3>Traceback</h3>" in body
    traceback_html = body.split("<h3>Traceback</h3>", 1)[1]
    assert "in load_rows" in traceback_html
    assert "ValueError: boom: bad data 42" in traceback_html
    assert "\x1b[" not in body
    files = list(message.iter_attachments())
    assert [(f.get_filename(), f.get_content_type()) for f in files] == [
        ("failing-output.html", "text/html")
    ]
    attached = files[0].get_payload(decode=True)
    assert attached == execution.output_html.read_bytes()
    assert b"boom: bad data 42" in attached
    (row,) = outcome.history()
    assert (row["status"], row["error"]) == (
        "failed",
        "cell 3 raised ValueError: boom: bad data 42",
    )
    assert [(d["purpose"], d["recipient"], d["status"]) for d in row["deliveries"]] == [
        ("failure", "ops@example.com", "delivered")
    ]
    with Ledger(outcome.ledger_url) as other_node:  # what failed, readable on every node
        assert other_node.run_file_names(outcome.run_id) == [
            "failure.json",
            "output.html",
            "worker.log",
        ]
        details = json.loads(other_node.run_file(outcome.run_id, "failure.json"))
    assert details["error"] == "cell 3 raised ValueError: boom: bad data 42"
    assert 'raise ValueError("boom: bad data 42")' in details["source"]
    assert "in load_rows" in details["traceback"]


def test_timeout_kills_the_kernel_and_its_children(tmp_path):
    pidfile = tmp_path / "pids.txt"
    notebook = write_notebook(
        tmp_path / "slow.ipynb",
        """
        import os, subprocess
        from pathlib import Path
        from notifier import report
        report.email("Never sent", to="x@example.com").text("complete but the run timed out")
        child = subprocess.Popen(["sleep", "300"])
        Path(pidfile).write_text(f"{os.getpid()} {child.pid}")
        """,
        "import time\ntime.sleep(300)",
        parameters='pidfile = ""',
    )
    transport = MemoryTransport()
    request = RunRequest(
        notebook,
        parameters={"pidfile": str(pidfile)},
        to=["boss@example.com"],
        timeout=6,
    )
    outcome = run(request, settings_in(tmp_path), transport)

    assert outcome.status == "failed"
    assert outcome.error == "timed out after 6s; the kernel was killed"
    assert 6 <= outcome.execution.duration < 60
    kernel_pid, child_pid = (int(p) for p in pidfile.read_text().split())
    assert gone(kernel_pid), f"kernel {kernel_pid} still alive"
    assert gone(child_pid), f"sleep child {child_pid} still alive"
    assert kernels_of_run(outcome.run_id) == []
    assert [m.subject for m in transport.sent] == [
        "[notifier] FAILED: slow: timed out after 6s; the kernel was killed"
    ]


def test_timeout_while_the_output_notebook_is_half_written(tmp_path):
    # The kill can land while papermill writes output.ipynb: the timeout must still be
    # reported (not a JSON error) and the failure email sent.
    notebook = write_notebook(
        tmp_path / "cut.ipynb",
        """
        import os, time
        from pathlib import Path
        output = Path(os.environ["NOTIFIER_PARTS_DIR"]).parent / "output.ipynb"
        output.write_text(output.read_text()[:200])
        time.sleep(300)
        """,
    )
    transport = MemoryTransport()
    outcome = run(
        RunRequest(notebook, to=["boss@example.com"], timeout=6), settings_in(tmp_path), transport
    )
    assert outcome.status == "failed"
    assert outcome.error == "timed out after 6s; the kernel was killed"
    assert [m.subject for m in transport.sent] == [
        "[notifier] FAILED: cut: timed out after 6s; the kernel was killed"
    ]


def test_cell_timeout_fails_the_run(tmp_path):
    notebook = write_notebook(tmp_path / "stuck.ipynb", "import time\ntime.sleep(120)")
    transport = MemoryTransport()
    outcome = run(
        RunRequest(notebook, to=["boss@example.com"], cell_timeout=3),
        settings_in(tmp_path),
        transport,
    )
    assert outcome.status == "failed"
    assert outcome.error == "cell 2 exceeded the cell timeout (3 s)", outcome.error
    assert outcome.execution.duration < 60
    assert [m.subject for m in transport.sent] == [f"[notifier] FAILED: stuck: {outcome.error}"]
    assert kernels_of_run(outcome.run_id) == []


def test_dead_kernel_fails_the_run(tmp_path):
    notebook = write_notebook(tmp_path / "crash.ipynb", "import os\nos._exit(1)")
    transport = MemoryTransport()
    outcome = run(
        RunRequest(notebook, to=["boss@example.com"]),
        settings_in(tmp_path),
        transport,
    )
    assert outcome.status == "failed"
    assert "kernel died" in outcome.error
    assert len(transport.sent) == 1
    assert "kernel died" in transport.sent[0].subject
    assert kernels_of_run(outcome.run_id) == []


# -- the SMTP password never reaches the kernel or the archive ----------------------------------


def test_the_password_never_reaches_the_kernel_or_any_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SMTP_PASSWORD", PASSWORD)
    monkeypatch.setenv("SMTP_PASS", PASSWORD)
    monkeypatch.setenv("NOTIFIER_TEST_SENTINEL", "visible-7e3f")
    caplog.set_level(logging.DEBUG)
    settings = settings_in(
        tmp_path,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT="2525",
        SMTP_USER="reports@example.com",
        SMTP_PASSWORD=PASSWORD,
    )
    keys_file = tmp_path / "kernel-env-keys.json"
    notebook = write_notebook(
        tmp_path / "snoop.ipynb",
        """
        import json, os
        from pathlib import Path
        from notifier import report
        env = {key: os.environ.get(key) for key in os.environ}
        print(env)
        for key in ("SMTP_PASSWORD", "SMTP_PASS"):
            print(key, os.getenv(key))
        for source in ("/proc/self/environ", f"/proc/{os.getppid()}/environ"):
            try:
                print(source, Path(source).read_bytes())
            except OSError as error:
                print(source, error)
        Path(keys_file).write_text(json.dumps(sorted(env)))
        mail = report.email("Environment", to="a@example.com")
        mail.text(repr(env))
        mail.attach(json.dumps(env).encode(), "env.json")
        env
        """,
        parameters='keys_file = ""',
    )
    transport = OutboxTransport(settings.outbox_dir)
    outcome = run(
        RunRequest(notebook, parameters={"keys_file": str(keys_file)}, to=["boss@example.com"]),
        settings,
        transport,
    )
    assert outcome.status == "succeeded", outcome.error

    keys = json.loads(keys_file.read_text())
    assert "SMTP_PASSWORD" not in keys
    assert "SMTP_PASS" not in keys
    assert "NOTIFIER_TEST_SENTINEL" in keys
    run_dir = outcome.execution.run_dir
    output = (run_dir / "output.ipynb").read_text(encoding="utf-8")
    assert "visible-7e3f" in output  # the dump did reach the archive...
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    files += [p for p in settings.outbox_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"output.ipynb", "output.html", "worker.log", "result.json"} <= names
    assert any(name.endswith(".eml") for name in names)
    files.append(settings.runs_dir.parent / "ledger.db")
    for path in files:  # ...but the password is nowhere (the ledger included)
        assert PASSWORD.encode() not in path.read_bytes(), path
    with Ledger(outcome.ledger_url) as ledger:  # not in the compressed run files either
        names = ledger.run_file_names(outcome.run_id)
        assert "output.html" in names
        for name in names:
            assert PASSWORD.encode() not in ledger.run_file(outcome.run_id, name), name
    assert PASSWORD not in caplog.text


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def cli_project(tmp_path: Path) -> Path:
    (tmp_path / ".env").write_text("", encoding="utf-8")
    return tmp_path


def cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "NOTIFIER_"))}
    return subprocess.run(
        [sys.executable, "-m", "notifier", "run", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_dry_run_writes_the_email_to_the_outbox(cli_project):
    write_notebook(
        cli_project / "daily.ipynb",
        'from notifier import report\nreport.email(f"Daily {region} {count}").text("hello")',
        parameters='region = "EU"\ncount = 1',
    )
    result = cli(
        cli_project, "daily.ipynb", "-p", "region", "US", "-p", "count", "7",
        "--to", "boss@example.com", "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    emls = list((cli_project / "outbox").glob("*.eml"))
    assert len(emls) == 1
    message = email.message_from_bytes(emls[0].read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "Daily US 7"
    assert message["To"] == "boss@example.com"
    assert "daily.ipynb: run " in result.stdout and " succeeded in " in result.stdout
    assert (
        f"email 'Daily US 7' to boss@example.com: written to outbox {emls[0].with_suffix('.html')}"
        in result.stdout
    )
    assert len(list((cli_project / "runs" / "daily").glob("*/output.ipynb"))) == 1
    # an ad-hoc run is in the history, named after its notebook, with its recipients
    history = subprocess.run(
        [sys.executable, "-m", "notifier", "history", "--json"],
        cwd=cli_project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    (row,) = json.loads(history.stdout)
    assert (row["job"], row["status"], row["trigger"]) == ("daily.ipynb", "succeeded", "manual")
    assert [(d["recipient"], d["status"]) for d in row["deliveries"]] == [
        ("boss@example.com", "delivered")
    ]


def test_cli_failing_notebook_exits_1(cli_project):
    write_notebook(cli_project / "broken.ipynb", "1 / 0")
    result = cli(cli_project, "broken.ipynb", "--to", "boss@example.com", "--dry-run")
    assert result.returncode == 1, result.stdout + result.stderr
    assert " failed in " in result.stdout
    assert "error: cell 2 raised ZeroDivisionError: division by zero" in result.stdout
    assert "Traceback" not in result.stderr
    assert len(list((cli_project / "outbox").glob("*.eml"))) == 1  # the failure email


def test_cli_bad_parameter_is_one_clear_error(cli_project):
    write_notebook(cli_project / "daily.ipynb", "x = 1", parameters='region = "EU"')
    result = cli(cli_project, "daily.ipynb", "-p", "regoin", "US", "--to", "boss@example.com")
    assert result.returncode != 0
    # the error and its fix, nothing else (no traceback, no outbox notice for a refused run)
    assert result.stderr == (
        "error: daily.ipynb does not declare the parameter(s) regoin; it declares: region.\n"
        "  fix: check the spelling, or add the name to the notebook's parameters cell\n"
    )
    assert result.stdout == ""
    assert not (cli_project / "runs").exists()


def test_each_attempt_of_a_run_gets_its_own_folder(tmp_path: Path) -> None:
    from notifier.notebook.execute import run_folder

    when = datetime(2026, 11, 22, 8, 0, tzinfo=timezone.utc)
    first = run_folder(tmp_path, "daily sales", "abc123", when)
    (first / "result.json").write_text("{}")  # an earlier attempt's result
    second = run_folder(tmp_path, "daily sales", "abc123", when)
    assert first.name == "20261122T080000Z-abc123" and first.parent.name == "daily-sales"
    assert second == first.with_name("20261122T080000Z-abc123-2")
    assert (second / "parts").is_dir() and not (second / "result.json").exists()


def test_an_unwritable_runs_folder_is_a_clear_error(tmp_path: Path) -> None:
    from notifier.notebook.execute import run_folder

    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a folder")
    with pytest.raises(RunError) as caught:
        run_folder(blocker, "job", "abc", datetime.now(timezone.utc))
    assert "NOTIFIER_RUNS_DIR" in (caught.value.fix or "")


# -- secrets, hide_code, attach_output, the sandbox ----------------------------------------


def test_an_attachment_carrying_the_password_is_refused(tmp_path):
    settings = settings_in(
        tmp_path,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT="2525",
        SMTP_USER="reports@example.com",
        SMTP_PASSWORD=PASSWORD,
    )
    notebook = write_notebook(
        tmp_path / "leak.ipynb",
        """
        from notifier import report
        from pathlib import Path
        secret = Path(secret_file).read_text()  # learnt some other way than a parameter
        Path("creds.txt").write_text("user=reports pass=" + secret)
        mail = report.email("Numbers", to="a@example.com")
        mail.text("see attachment")
        mail.attach("creds.txt")
        """,
        parameters='secret_file = ""',
    )
    transport = MemoryTransport()
    (tmp_path / "secret.txt").write_text(PASSWORD)
    request = RunRequest(
        notebook, parameters={"secret_file": str(tmp_path / "secret.txt")}, to=["boss@example.com"]
    )
    outcome = run(request, settings, transport)
    assert outcome.status == "failed"
    assert "carries the SMTP password in 'creds.txt'" in (outcome.error or "")
    assert [m.subject for m in transport.sent] == [
        "[notifier] FAILED: leak: an email cannot be sent: The email 'Numbers' carries the "
        "SMTP password in 'creds.txt'; it was not sent."
    ]
    assert PASSWORD.encode() not in transport.sent[0].data


def test_hide_code_archives_without_code_but_the_failure_email_shows_it(tmp_path):
    notebook = write_notebook(
        tmp_path / "secretive.ipynb",
        "value = 41  # a-comment-only-in-the-code",
        "raise RuntimeError(f'boom {value + 1}')",
    )
    transport = MemoryTransport()
    outcome = run(
        RunRequest(notebook, to=["boss@example.com"]),
        settings_in(tmp_path),
        transport,
        hide_code=True,
    )
    assert outcome.status == "failed"
    archived = outcome.execution.output_html.read_text(encoding="utf-8")
    assert "boom 42" in archived and "a-comment-only-in-the-code" not in archived
    (failure,) = transport.sent
    files = {p.get_filename(): p for p in parse(failure).iter_attachments()}
    attached = files["secretive-output.html"].get_payload(decode=True).decode()
    assert "a-comment-only-in-the-code" in attached


def test_attach_output_puts_the_rendered_output_on_every_email(tmp_path):
    notebook = write_notebook(
        tmp_path / "two.ipynb",
        """
        from notifier import report
        report.email("One", to="a@example.com").text("first")
        report.email("Two", to="b@example.com").text("second")
        """,
    )
    transport = MemoryTransport()
    outcome = run(
        RunRequest(notebook, to=["boss@example.com"]),
        settings_in(tmp_path),
        transport,
        attach_output="html",
    )
    assert outcome.status == "succeeded", outcome.error
    assert [[p.get_filename() for p in parse(m).iter_attachments()] for m in transport.sent] == [
        ["two-output.html"],
        ["two-output.html"],
    ]


def test_the_kernel_cannot_read_the_projects_env(tmp_path):
    from notifier.notebook.sandbox import landlock_abi

    if landlock_abi() < 1:
        if os.environ.get("CI") == "true":
            pytest.fail("Linux Landlock is needed for this test in CI")
        pytest.skip("this kernel has no Landlock: notebooks can read .env here (documented)")
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / ".env").write_text(f"SMTP_PASSWORD={PASSWORD}\n")
    (project / "data.csv").write_text("a,b\n1,2\n")
    notebook = write_notebook(
        project / "notebooks" / "snoop.ipynb",
        """
        from pathlib import Path
        from notifier import report
        try:
            found = Path("../.env").read_text()
        except OSError as error:
            found = type(error).__name__
        report.email("snoop", to="a@example.com").text(found + " " + Path("../data.csv").read_text())
        """,
    )
    transport = MemoryTransport()
    outcome = run(RunRequest(notebook), settings_in(project), transport)
    assert outcome.status == "succeeded", outcome.error
    body = parse(transport.sent[0]).get_body(("plain",)).get_content()
    assert "PermissionError" in body and "a,b" in body  # .env hidden, the data is not
    assert PASSWORD not in body


def test_the_kernel_cannot_read_the_env_the_settings_came_from(tmp_path, monkeypatch):
    """jobs.yaml in proj/ runs ``notebook: ../nbs/x.ipynb``, started from another folder:
    neither the notebook's folder nor the current one holds that .env, yet it is hidden."""
    from notifier.notebook.sandbox import landlock_abi
    from notifier.project import project_settings

    if landlock_abi() < 1:
        if os.environ.get("CI") == "true":
            pytest.fail("Linux Landlock is needed for this test in CI")
        pytest.skip("this kernel has no Landlock: notebooks can read .env here (documented)")
    project = tmp_path / "proj"
    project.mkdir()
    env_file = project / ".env"
    env_file.write_text(f"SMTP_HOST=127.0.0.1\nSMTP_USER=u@example.com\nSMTP_PASSWORD={PASSWORD}\n")
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    notebook = write_notebook(
        tmp_path / "nbs" / "x.ipynb",
        """
        from pathlib import Path
        from notifier import report
        try:
            found = Path(env_file).read_text()
        except OSError as error:
            found = type(error).__name__
        report.email("snoop", to="a@example.com").text(found)
        """,
        parameters='env_file = ""',
    )
    settings = project_settings(project)
    assert settings.env_files == (env_file.resolve(),)
    transport = MemoryTransport()
    outcome = run(RunRequest(notebook, parameters={"env_file": str(env_file)}), settings, transport)
    assert outcome.status == "succeeded", outcome.error
    body = parse(transport.sent[0]).get_body(("plain",)).get_content()
    assert "PermissionError" in body
    assert PASSWORD not in body


def test_the_kernel_cannot_append_to_or_truncate_the_projects_env(tmp_path):
    """Writing .env (an SMTP_HOST of the notebook's own, to harvest the password at the next
    start) is denied like reading it; the project's other files stay writable."""
    from notifier.notebook.sandbox import landlock_abi

    if landlock_abi() < 1:
        if os.environ.get("CI") == "true":
            pytest.fail("Linux Landlock is needed for this test in CI")
        pytest.skip("this kernel has no Landlock: notebooks can change .env here (documented)")
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    secret = f"SMTP_PASSWORD={PASSWORD}\n"
    (project / ".env").write_text(secret)
    (project / "data.csv").write_text("a,b\n")
    notebook = write_notebook(
        project / "notebooks" / "tamper.ipynb",
        """
        import os
        from pathlib import Path
        from notifier import report

        def attempt(action):
            try:
                action()
                return "done"
            except OSError as error:
                return type(error).__name__

        results = {
            "append": attempt(lambda: open("../.env", "a").write("SMTP_HOST=evil\\n")),
            "overwrite": attempt(lambda: Path("../.env").write_text("SMTP_HOST=evil\\n")),
            "truncate": attempt(lambda: os.truncate("../.env", 0)),
            "data": attempt(lambda: open("../data.csv", "a").write("1,2\\n")),
            "new": attempt(lambda: Path("new.csv").write_text("x")),
        }
        report.email("tamper", to="a@example.com").text(repr(sorted(results.items())))
        """,
    )
    transport = MemoryTransport()
    outcome = run(RunRequest(notebook), settings_in(project), transport)
    assert outcome.status == "succeeded", outcome.error
    body = parse(transport.sent[0]).get_body(("plain",)).get_content().strip()
    truncated = "PermissionError" if landlock_abi() >= 3 else "done"
    assert body == repr(
        [
            ("append", "PermissionError"),
            ("data", "done"),
            ("new", "done"),
            ("overwrite", "PermissionError"),
            ("truncate", truncated),
        ]
    )
    if landlock_abi() >= 3:
        assert (project / ".env").read_text() == secret
    assert (project / "data.csv").read_text() == "a,b\n1,2\n"
