"""The command line as a user runs it: from the project, a subfolder, or elsewhere."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from notebooks import write_notebook


def notifier(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env_keep = {"PATH", "HOME", "LANG", "PYTHONPATH"}  # no SMTP_* or NOTIFIER_* from outside
    env = {k: v for k, v in os.environ.items() if k in env_keep}
    return subprocess.run(
        [sys.executable, "-m", "notifier", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_project(root: Path) -> Path:
    project = root / "proj"
    (project / "notebooks").mkdir(parents=True)
    write_notebook(
        project / "notebooks" / "report.ipynb",
        "from notifier import report\nreport.email(f'Report {region}').markdown('hi')",
        parameters="region = 'all'",
    )
    (project / "jobs.yaml").write_text(
        "jobs:\n"
        "  - name: report\n"
        "    notebook: notebooks/report.ipynb\n"
        '    schedule: "0 8 * * 1-5"\n'
        "    to: ${REPORT_TO}\n"
        "    timezone: ${NOTIFIER_TIMEZONE}\n"
    )
    (project / ".env").write_text(
        "REPORT_TO=team@example.com\nNOTIFIER_TIMEZONE=Europe/Berlin\n"
        "NOTIFIER_DB_URL=sqlite:///ledger.db\n"
    )
    return project


def test_jobs_yaml_variables_come_from_the_projects_dotenv(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (project / "sub").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    for cwd, args in (
        (project, ["validate", "--json"]),
        (project / "sub", ["validate", "--json"]),  # found in the project folder
        (elsewhere, ["validate", "--json", str(project / "jobs.yaml")]),
    ):
        result = notifier(cwd, *args)
        assert result.returncode == 0, result.stderr
        [job] = json.loads(result.stdout)["jobs"]
        assert job["timezone"] == "Europe/Berlin"
        assert job["next_fire_times"][0].endswith(("+01:00", "+02:00"))


def test_list_from_elsewhere_uses_the_projects_ledger(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # read-only commands never create a ledger; they say there is none yet
    result = notifier(elsewhere, "list", "--json", str(project / "jobs.yaml"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["jobs"][0]["last_status"] is None
    for args in (["history"], ["history", "--failed"], ["queue"]):
        result = notifier(project, *args)
        assert result.returncode == 0, result.stderr
        assert "no ledger yet" in result.stdout, result.stdout
    assert not (project / "ledger.db").exists()
    assert not (elsewhere / "ledger.db").exists()

    ran = notifier(project, "run", "report", "--dry-run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (project / "ledger.db").exists()
    result = notifier(elsewhere, "list", "--json", str(project / "jobs.yaml"))
    assert json.loads(result.stdout)["jobs"][0]["last_status"] == "succeeded"
    assert not (elsewhere / "ledger.db").exists()


def test_a_parameter_typo_in_run_job_is_refused_and_mails_nobody(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    result = notifier(project, "run", "report", "-p", "regoin", "EMEA")
    assert result.returncode == 2
    assert "does not declare the parameter(s) regoin" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "outbox").exists()
    assert not (project / "runs").exists()


def test_a_bad_smtp_setting_stops_only_the_commands_that_send(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    with (project / ".env").open("a") as dotenv:
        dotenv.write("SMTP_HOST=smtp.example.com\nSMTP_PORT=abc\n")

    for args in (
        ["list"],
        ["validate"],
        ["history"],
        ["queue"],
        ["send", "--dry-run", "--to", "a@example.com", "-s", "hi", "--body", "text"],
    ):
        result = notifier(project, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert "SMTP_PORT='abc'" in result.stderr and "--dry-run does not need them" in result.stderr
    assert list((project / "outbox").glob("*.eml"))
    dry = notifier(project, "run", "report", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "written to outbox" in dry.stdout

    for args in (
        ["send", "--to", "a@example.com", "-s", "hi", "--body", "text"],
        ["run", "notebooks/report.ipynb"],
        ["schedule"],
    ):
        result = notifier(project, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "error: SMTP_PORT='abc' is not a port number." in result.stderr, args
        assert "Traceback" not in result.stderr
    doctor = notifier(project, "doctor")
    assert doctor.returncode == 2 and "FAIL Settings: SMTP_PORT='abc'" in doctor.stdout


def test_settings_without_smtp_checks_anchor_paths_like_the_full_ones(
    tmp_path: Path, monkeypatch
) -> None:
    from notifier.cli.context import settings_for_jobs

    for key in list(os.environ):
        if key.startswith(("SMTP_", "NOTIFIER_")):
            monkeypatch.delenv(key)
    project = make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    full = settings_for_jobs(project / "jobs.yaml")
    assert settings_for_jobs(project / "jobs.yaml", smtp=False) == full
    assert full.db_url == f"sqlite:///{project / 'ledger.db'}"
    assert full.outbox_dir == project / "outbox"


def test_bad_input_exits_2_with_one_clear_error(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (project / "attachments").mkdir()

    unknown = notifier(project, "run", "reprot")
    assert unknown.returncode == 2, unknown.stderr
    assert "no job named 'reprot'" in unknown.stderr and "Did you mean 'report'?" in unknown.stderr

    folder = notifier(
        project, "send", "--dry-run", "--to", "a@example.com", "-s", "x", "--body", "y",
        "--attach", "attachments",
    )  # fmt: skip
    assert folder.returncode == 2
    assert "The attachment 'attachments' is a folder, not a file." in folder.stderr
    assert "does not exist" not in folder.stderr

    (project / ".env").write_bytes(b"REPORT_TO=team@example.com\nSMTP_FROM=R\xe9ports <r@x.org>\n")
    for args in (["validate"], ["list"], ["send", "--to", "a@b.org", "-s", "x", "--body", "y"]):
        result = notifier(project, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert f"{project / '.env'}:2: not UTF-8 text (byte 0xe9)" in result.stderr, args
        assert "Traceback" not in result.stderr


LOG_SCRIPT = """
import logging
from datetime import datetime, timezone
from notifier.cli import configure_logging

configure_logging(verbose=False, daemon=True)
log = logging.getLogger("notifier.daemon")
for created, slot in (
    (datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc), datetime(2026, 1, 15, 7, 0, tzinfo=timezone.utc)),
    (datetime(2026, 7, 15, 12, 0, tzinfo=timezone.utc), "2026-07-15T08:00:00-04:00"),
    # the fall-back night: 02:30 local happens twice, first at +02:00, then at +01:00
    (datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc), "2026-10-25T00:30:00Z"),
    (datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc), "2026-10-25T01:30:00Z"),
):
    record = log.makeRecord(log.name, logging.INFO, "x.py", 1, "slot %s", (slot,), None)
    record.created = created.timestamp()
    log.handle(record)
"""


def test_log_lines_show_every_time_in_local_time_with_the_offset_of_that_instant(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "PYTHONPATH"}}
    env["TZ"] = "Europe/Berlin"  # +01:00 in January, +02:00 in July
    result = subprocess.run(
        [sys.executable, "-c", LOG_SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "2026-01-15T13:00:00+01:00 INFO notifier.daemon: slot 2026-01-15T08:00:00+01:00",
        "2026-07-15T14:00:00+02:00 INFO notifier.daemon: slot 2026-07-15T14:00:00+02:00",
        "2026-10-25T02:30:00+02:00 INFO notifier.daemon: slot 2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00 INFO notifier.daemon: slot 2026-10-25T02:30:00+01:00",
    ]


def test_every_command_has_a_description() -> None:
    from notifier.cli import build_parser

    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [name for name, sub in subparsers.choices.items() if not sub.description]
    assert missing == []


def test_commands_that_connect_without_verification_warn_once(
    tmp_path: Path, smtp_server_factory
) -> None:
    server = smtp_server_factory("ssl")
    project = make_project(tmp_path)
    with (project / ".env").open("a") as dotenv:
        dotenv.write(
            f"SMTP_HOST=127.0.0.1\nSMTP_PORT={server.port}\nSMTP_SECURITY=ssl\n"
            "SMTP_VERIFY=false\nSMTP_TIMEOUT=5\n"
        )
    warning = "warning: TLS certificate verification is OFF (SMTP_VERIFY=false)"
    mail = ["--to", "a@example.com", "--to", "b@example.com", "-s", "hi", "--body", "text"]

    sent = notifier(project, "send", *mail)
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.count(warning) == 1 and len(server.messages) == 1
    doctor = notifier(project, "doctor")
    assert doctor.returncode == 0, doctor.stdout
    assert doctor.stderr.count(warning) == 1
    for quiet in (["send", "--dry-run", *mail], ["list"]):  # nothing connects
        result = notifier(project, *quiet)
        assert result.returncode == 0 and warning not in result.stderr, result.stderr


def test_a_notebook_without_recipients_goes_to_the_outbox_but_not_to_a_server(
    tmp_path: Path, smtp_server_factory
) -> None:
    project = make_project(tmp_path)
    # the outbox (no SMTP settings): written, addressed to undisclosed recipients, one warning
    dry = notifier(project, "run", "notebooks/report.ipynb", "-p", "region", "EU")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "warning: the email 'Report EU' has no recipients" in dry.stdout
    assert "written to outbox" in dry.stdout
    [eml] = (project / "outbox").glob("*.eml")
    assert b"To: undisclosed-recipients:;" in eml.read_bytes()
    # a real server: it stays an error (exit 1), the run is recorded as failed
    server = smtp_server_factory("plain")
    with (project / ".env").open("a") as dotenv:
        dotenv.write(f"SMTP_HOST=127.0.0.1\nSMTP_PORT={server.port}\nSMTP_SECURITY=none\n")
    real = notifier(project, "run", "notebooks/report.ipynb", "-p", "region", "US")
    assert real.returncode == 1, real.stdout + real.stderr
    assert "The email 'Report US' has no recipients." in real.stdout
    assert server.messages == []
    history = json.loads(notifier(project, "history", "--json").stdout)
    assert [(row["job"], row["status"]) for row in history] == [
        ("notebooks/report.ipynb", "failed"),
        ("notebooks/report.ipynb", "succeeded"),
    ]


def test_history_and_queue_on_an_empty_and_a_busy_ledger(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    ran = notifier(project, "run", "report", "--dry-run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    failed = notifier(project, "history", "--failed")
    assert (failed.returncode, failed.stdout) == (0, "no failed runs (1 run recorded)\n")
    history = notifier(project, "history")
    assert "report" in history.stdout and "delivered to the outbox" in history.stdout
    queue = notifier(project, "queue")
    assert queue.stdout == "the queue is empty: nothing waits to be delivered\n"
    for args, fix in (
        (["queue", "retry"], "Retry needs an ID or --all"),
        (["queue", "drop"], "Drop needs the ID of a message"),
        (["queue", "drop", "999"], "Nothing waiting under ID 999"),
        (["run", "report", "--kernel", "no-such-kernel"], "no Jupyter kernel named"),
    ):
        result = notifier(project, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert fix in result.stderr and "Traceback" not in result.stderr


def test_a_bad_or_driverless_ledger_url_is_bad_input(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    for url in ("not a url", "postgresql+nosuchdriver://u@localhost/db"):
        with (project / ".env").open("a") as dotenv:
            dotenv.write(f"NOTIFIER_DB_URL={url}\n")
        result = notifier(project, "history")
        assert result.returncode == 2, (url, result.stdout, result.stderr)
        assert "NOTIFIER_DB_URL" in result.stderr or "driver" in result.stderr
        assert "Traceback" not in result.stderr
