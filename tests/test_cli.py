"""The command line as a user runs it: from the project, a subfolder, or elsewhere."""

from __future__ import annotations

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
