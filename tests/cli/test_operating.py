"""Operating several nodes from the command line: notifier nodes, pause/resume (and list),
and show, on SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from ledgers import expire_lease
from test_cli import make_project, notifier

from notifier.ledger import Ledger

UTC = timezone.utc


@pytest.fixture
def project(tmp_path: Path, db_url: str) -> Path:
    root = make_project(tmp_path)
    env = (root / ".env").read_text().replace("sqlite:///ledger.db", db_url)
    (root / ".env").write_text(env)
    return root


@pytest.fixture
def nodes(db_url: str) -> Iterator[list[Ledger]]:
    opened: list[Ledger] = []
    yield opened
    for ledger in opened:
        ledger.close()


def daemon_node(db_url: str, owner: str, jobs_hash: str, opened: list[Ledger]) -> Ledger:
    ledger = Ledger(db_url, owner=owner)
    opened.append(ledger)
    ledger.nodes.configure(role="daemon", jobs_hash=jobs_hash)
    ledger.nodes.ensure_registered()
    return ledger


def test_nodes_shows_each_node_its_state_its_runs_and_disagreeing_jobs_files(
    project: Path, db_url: str, nodes: list[Ledger]
) -> None:
    a = daemon_node(db_url, "host-a:11:1-a", "a" * 64, nodes)
    daemon_node(db_url, "host-b:22:2-b", "a" * 64, nodes)
    daemon_node(db_url, "host-c:33:3-c", "c" * 64, nodes)  # not redeployed
    crashed = daemon_node(db_url, "host-d:44:4-d", "a" * 64, nodes)
    gone = daemon_node(db_url, "host-e:55:5-e", "a" * 64, nodes)
    slot = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    run = a.claim("report", slot)
    assert run is not None and a.mark_running(run.run_id)
    assert crashed.claim("report", slot + timedelta(days=1)) is not None
    expire_lease(db_url, crashed.owner)
    gone.nodes.stop()

    done = notifier(project, "nodes", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    by_id = {n["node_id"]: n for n in report["nodes"]}
    assert {n: by_id[n]["state"] for n in by_id} == {
        "host-a:11:1-a": "alive",
        "host-b:22:2-b": "alive",
        "host-c:33:3-c": "alive",
        "host-d:44:4-d": "expired",
        "host-e:55:5-e": "stopped",
    }
    assert {n["host"] for n in report["nodes"]} == {socket.gethostname()}
    assert [r["run_id"] for r in by_id["host-a:11:1-a"]["running"]] == [run.run_id]
    assert len(by_id["host-d:44:4-d"]["running"]) == 1  # until another node takes it over
    assert by_id["host-c:33:3-c"]["jobs_hash_short"] == "c" * 12
    for node in report["nodes"]:
        assert node["role"] == "daemon" and node["started_at"] and node["heartbeat_at"]
    (warning,) = report["warnings"]
    assert "do not agree about the jobs file" in warning
    assert "aaaaaaaaaaaa on" in warning and "cccccccccccc on" in warning

    text = notifier(project, "nodes")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[:4] == ["HOST", "PID", "ROLE", "STATE"]
    assert sum(" alive " in line for line in lines) == 3
    assert any(" expired " in line for line in lines)
    assert f"running report (slot {slot.isoformat()}" in text.stdout
    assert text.stderr.count("warning: the running daemons do not agree") == 1


def test_pause_is_obeyed_by_every_node_and_shown_by_list(project: Path, db_url: str) -> None:
    done = notifier(project, "pause", "report", "--reason", "migrating the warehouse")
    assert done.returncode == 0, done.stderr
    assert "report: paused on every node" in done.stdout
    again = notifier(project, "pause", "report")
    assert again.returncode == 0 and "already paused by " in again.stdout

    listed = notifier(project, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (job,) = json.loads(listed.stdout)["jobs"]
    assert job["paused"]["reason"] == "migrating the warehouse"
    assert "@" in job["paused"]["by"]
    assert job["paused"]["since"].endswith(("+01:00", "+02:00"))  # the job's zone
    text = notifier(project, "list")
    assert " PAUSED " in text.stdout
    assert "report: paused by " in text.stdout and "migrating the warehouse" in text.stdout

    with Ledger(db_url) as other_node:  # what a daemon on another machine reads
        assert set(other_node.paused()) == {"report"}

    resumed = notifier(project, "resume", "report")
    assert resumed.returncode == 0 and "report: resumed on every node" in resumed.stdout
    assert "was not paused" in notifier(project, "resume", "report").stdout
    (job,) = json.loads(notifier(project, "list", "--json").stdout)["jobs"]
    assert job["paused"] is None

    for command in ("pause", "resume"):
        unknown = notifier(project, command, "reprot")
        assert unknown.returncode == 2
        assert (
            "No job named 'reprot'" in unknown.stderr and "did you mean 'report'" in unknown.stderr
        )
        assert "Traceback" not in unknown.stderr


def test_show_reads_a_run_from_the_ledger_alone(project: Path, tmp_path: Path) -> None:
    done = notifier(project, "run", "report", "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(notifier(project, "history", "--json").stdout)
    assert row["files"] == ["output.html", "worker.log"]
    run_id = row["run_id"]
    # another machine has no run folder: remove this one's to be sure nothing comes from it
    for path in (project / "runs").rglob("*"):
        if path.is_file():
            path.unlink()

    summary = notifier(project, "show", run_id[:8])
    assert summary.returncode == 0, summary.stderr
    assert f"run {run_id}: report" in summary.stdout
    assert f"output: notifier show {run_id[:12]} output" in summary.stdout
    assert "email 1: Report all" in summary.stdout
    as_json = json.loads(notifier(project, "show", run_id, "--json").stdout)
    assert as_json["emails"][0]["subject"] == "Report all"

    html = notifier(project, "show", run_id, "output")
    assert html.returncode == 0 and "Report all" in html.stdout and "<html" in html.stdout
    log = notifier(project, "show", run_id, "log", "-o", str(tmp_path / "worker.log"))
    assert log.returncode == 0 and (tmp_path / "worker.log").stat().st_size > 0
    eml = notifier(project, "show", run_id, "email", "1")
    assert eml.returncode == 0
    assert "Subject: Report all" in eml.stdout and "To: team@example.com" in eml.stdout

    for args, expected in (
        ([run_id, "failure"], "has no failure in the ledger"),
        ([run_id, "email", "7"], "Say which email"),
        (["zzzzzz"], "No run 'zzzzzz'"),
        (["ab"], "too short"),
    ):
        bad = notifier(project, "show", *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert expected in bad.stderr and "Traceback" not in bad.stderr


def test_show_hides_the_password_in_the_parameters_of_an_older_run(
    project: Path, db_url: str
) -> None:
    # a ledger written before such parameters were refused may keep the SMTP password
    password = "hunter2-Sup3r-s3cret"
    with (project / ".env").open("a") as env:
        env.write(f"SMTP_HOST=127.0.0.1\nSMTP_USER=u@example.com\nSMTP_PASSWORD={password}\n")
    with Ledger(db_url) as ledger:
        run = ledger.claim(
            "report",
            datetime(2026, 1, 5, 7, 30, tzinfo=UTC),
            parameters={"region": f"x {password}", "nested": [{"k": password}]},
        )
        assert run is not None
        ledger.finish(run.run_id, "failed", error="an old run")

    as_json = notifier(project, "show", run.run_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["parameters"] == {"region": "x ***", "nested": [{"k": "***"}]}
    summary = notifier(project, "show", run.run_id)
    assert summary.returncode == 0, summary.stderr
    for shown in (as_json, summary):
        assert password not in shown.stdout + shown.stderr
