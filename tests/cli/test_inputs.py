"""Out-of-range numbers from every door: flags, settings, jobs.yaml.

nan, inf, negative, zero where it means nothing, and values so large that they overflow a
date, a database integer or a wait further down: each is refused up front with exit 2 and
one ``error:`` line that names the flag, setting or line and the allowed range, then its
fix; never a traceback, never a run that starts with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from notebooks import write_notebook
from notifier.cli import main
from notifier.ledger import Ledger

HUGE = "99999999999999999999"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with a notebook, a job and a ledger, as the current folder; no SMTP_*."""
    for key in list(os.environ):
        if key.startswith(("SMTP_", "NOTIFIER_")):
            monkeypatch.delenv(key)
    write_notebook(tmp_path / "report.ipynb", "from notifier import report")
    (tmp_path / "jobs.yaml").write_text(
        "jobs:\n"
        "  - name: report\n"
        "    notebook: report.ipynb\n"
        "    schedule: {every: 1h}\n"
        "    to: team@example.com\n"
    )
    Ledger(f"sqlite:///{tmp_path / 'notifier.db'}").close()  # history, queue: a ledger to read
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``notifier ARGS`` in this process: (exit code, stderr). Any traceback fails the test."""
    try:
        code = main(list(args))
    except SystemExit as stop:  # argparse
        code = int(stop.code or 0)
    return code, capsys.readouterr().err


def one_error(stderr: str) -> str:
    """The single ``error:`` line, checked to be followed by its fix and nothing else."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert lines[-2:] == [errors[0], lines[-1]] and lines[-1].startswith("  fix: "), stderr
    return errors[0]


FLAG_CASES = [
    *[
        (["run", "report.ipynb", f"--timeout={bad}"], "argument --timeout: ", "allowed: 1s to 1d")
        for bad in ("nan", "inf", "-inf", "0", "-5", "1e300", "2d", HUGE, "soon")
    ],
    *[
        (["run", "report", f"--cell-timeout={bad}"], "argument --cell-timeout: ", "1s to 1d")
        for bad in ("0", "-5", "nan", "inf", "1d1s")
    ],
    *[
        (["history", f"--limit={bad}"], "argument --limit: ", "allowed: 1 to 100000")
        for bad in (HUGE, "0", "-1", "nan", "2.5", "9" * 5000)
    ],
    *[
        (["queue", "retry", bad], "argument ID: ", "allowed: 1 to 9223372036854775807")
        for bad in (HUGE, "0", "-5")
    ],
    (["show", "abcd", "email", HUGE], "argument N: ", "allowed: 1 to 100000"),
    (["show", "abcd", "email", "0"], "argument N: '0' is zero", "allowed: 1 to 100000"),
    (["schedule", "--workers", "0"], "argument --workers: ", "allowed: 1 to 256"),
    (["schedule", "--workers", HUGE], "argument --workers: ", "allowed: 1 to 256"),
    (["schedule", "--web-port", "70000"], "argument --web-port: ", "allowed: 0 to 65535"),
    *[
        (["web", "--port", bad], "argument --port: ", "allowed: 0 to 65535")
        for bad in ("70000", "-1", HUGE, "nan")
    ],
]


@pytest.mark.parametrize(("args", "names", "allowed"), FLAG_CASES)
def test_a_flag_out_of_range_is_one_error(
    project: Path, capsys: pytest.CaptureFixture[str], args: list[str], names: str, allowed: str
) -> None:
    code, stderr = cli(capsys, *args)
    assert code == 2, stderr
    line = one_error(stderr)
    assert names in line and allowed in line, line
    assert not (project / "runs").exists()  # nothing ran


SEND = ["send", "--to", "a@example.com", "-s", "hi", "--body", "text"]
SETTING_CASES = [
    *[
        ({"SMTP_HOST": "127.0.0.1", "SMTP_TIMEOUT": bad}, SEND, "SMTP_TIMEOUT=", "1s to 1d")
        for bad in ("nan", "inf", "0", "-1", "2d")
    ],
    *[
        ({"NOTIFIER_DELIVERY_LIFETIME": "99999999d"}, args, "NOTIFIER_DELIVERY_LIFETIME=", "3650d")
        for args in (["run", "report"], ["validate"], ["schedule"])
    ],
    ({"NOTIFIER_LEASE_SECONDS": "9999999999d"}, ["run", "report"], "NOTIFIER_LEASE_SECONDS=", ""),
    ({"NOTIFIER_LEASE_SECONDS": "nan"}, ["validate"], "NOTIFIER_LEASE_SECONDS='nan'", "2s to 1d"),
    ({"NOTIFIER_RETRY_BACKOFF": "99999999d"}, ["run", "report"], "NOTIFIER_RETRY_BACKOFF=", ""),
    ({"NOTIFIER_RETRY_BACKOFF_MAX": "inf"}, ["schedule"], "NOTIFIER_RETRY_BACKOFF_MAX=", "1d"),
    ({"NOTIFIER_SHUTDOWN_GRACE": "-1"}, ["schedule"], "NOTIFIER_SHUTDOWN_GRACE='-1' is neg", ""),
    ({"NOTIFIER_WORKERS": HUGE}, ["schedule"], "NOTIFIER_WORKERS=", "allowed: 1 to 256"),
    ({"NOTIFIER_WEB_PORT": "99999"}, ["web"], "NOTIFIER_WEB_PORT='99999'", "0 to 65535"),
    *[
        ({"NOTIFIER_DB_URL": "postgresql://u:pw@db:abc/x"}, args, "NOTIFIER_DB_URL", "port")
        for args in (["history"], ["validate"], ["run", "report"], ["queue"])
    ],
    *[
        ({"NOTIFIER_DB_URL": f"postgresql://u:pw@db:{bad}/x"}, ["history"], "port", "1 to 65535")
        for bad in ("0", "99999", HUGE)
    ],
]


@pytest.mark.parametrize(("env", "args", "names", "allowed"), SETTING_CASES)
def test_a_setting_out_of_range_is_one_error(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: list[str],
    names: str,
    allowed: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, stderr = cli(capsys, *args)
    assert code == 2, stderr
    line = one_error(stderr)
    assert names in line and allowed in line, line
    assert not (project / "runs").exists() and not (project / "outbox").exists()


JOBS_CASES = [
    ("deliver_within: 99999999d", "field 'deliver_within': '99999999d' is more than 3650d"),
    ("keep_runs: 99999999999d", "field 'keep_runs': '99999999999d' is more than 3650d"),
    ("timeout: .nan", "field 'timeout': nan is not a duration"),
    ("timeout: .inf", "field 'timeout': inf is not a duration"),
    ("cell_timeout: 0", "field 'cell_timeout': 0 is zero; allowed: 1s to 1d"),
    ("cooldown: -1s", "field 'cooldown': '-1s' is negative; allowed: 0s to 3650d"),
    ("retries: {count: 2, delay: 2d}", "field 'retries.delay': '2d' is more than 1d"),
    ("misfire: {policy: catch_up, grace: 1e9}", "field 'misfire.grace': '1e9' is not"),
]


@pytest.mark.parametrize(("line", "problem"), JOBS_CASES)
def test_a_jobs_yaml_value_out_of_range_is_one_line_with_its_file_line(
    project: Path, capsys: pytest.CaptureFixture[str], line: str, problem: str
) -> None:
    with (project / "jobs.yaml").open("a") as jobs:
        jobs.write(f"    {line}\n")
    for args in (["validate"], ["run", "report"], ["list"]):
        code, stderr = cli(capsys, *args)
        assert code == 2, (args, stderr)
        assert "Traceback" not in stderr
        assert "jobs.yaml: 1 error\n" in stderr, stderr
        [detail] = [row for row in stderr.splitlines() if "jobs.yaml:6:" in row]
        assert f"jobs.yaml:6: job 'report', {problem}" in detail, detail


def test_validate_warns_when_keep_runs_is_shorter_than_the_misfire_grace(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (project / "jobs.yaml").open("a") as jobs:
        jobs.write("    keep_runs: 3m\n    misfire: {policy: catch_up, grace: 1d}\n")
    code, stderr = cli(capsys, "validate")
    assert code == 0, stderr
    [warning] = stderr.splitlines()
    assert warning.startswith("warning: jobs.yaml:2: job 'report': keep_runs (3m) is shorter")
    assert "kept for 1d anyway" in warning and "set keep_runs to at least 1d" in warning


def test_the_installed_command_refuses_them_too(project: Path) -> None:
    """The real console script in a subprocess: exit 2, the error and its fix, no traceback."""
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "PYTHONPATH"}}
    cases = [
        ({}, ["history", "--limit", HUGE], "argument --limit"),
        ({}, ["run", "report", "--timeout", "nan"], "argument --timeout"),
        ({"SMTP_HOST": "127.0.0.1", "SMTP_TIMEOUT": "nan"}, SEND, "SMTP_TIMEOUT='nan'"),
        ({"NOTIFIER_DB_URL": "postgresql://u:pw@db:abc/x"}, ["history"], "NOTIFIER_DB_URL"),
    ]
    for extra, args, named in cases:
        result = subprocess.run(
            [sys.executable, "-m", "notifier", *args],
            cwd=project,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, (args, result.stderr)
        assert named in one_error(result.stderr), result.stderr


@pytest.mark.parametrize("target", ["report", "report.ipynb"])
@pytest.mark.parametrize("flag", ["--to", "--cc", "--bcc", "--on-failure"])
def test_a_bad_address_on_the_command_line_is_refused_before_the_run(
    project: Path, capsys: pytest.CaptureFixture[str], target: str, flag: str
) -> None:
    code, stderr = cli(capsys, "run", target, flag, "not-an-address", "--dry-run")
    assert code == 2
    assert "'not-an-address' is not a valid email address (" + flag + ")" in one_error(stderr)
    ledger = Ledger(f"sqlite:///{project / 'notifier.db'}", create=False)
    try:
        assert ledger.history(limit=10) == []  # nothing ran, nothing recorded
    finally:
        ledger.close()
    assert not (project / "runs").exists()


def test_show_failure_of_a_run_that_failed_outside_its_cells_prints_its_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_notebook(
        project / "bad.ipynb", "from notifier import report\nreport.email('x', to='a@@b')"
    )
    code, _ = cli(capsys, "run", "bad.ipynb", "--dry-run")
    assert code == 1
    ledger = Ledger(f"sqlite:///{project / 'notifier.db'}", create=False)
    try:
        (run,) = ledger.history(limit=10)
    finally:
        ledger.close()
    assert run.status == "failed" and run.error
    code = main(["show", run.run_id, "failure"])
    shown = capsys.readouterr()
    assert code == 0, shown.err
    assert "'a@@b' is not a valid email address" in shown.out
