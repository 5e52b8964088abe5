"""Every page and the JSON API over real HTTP, on a project with real runs: what they show,
Run now, the CSRF check, path traversal, the Host check, the token, and no secret in a page."""

from __future__ import annotations

import email
import email.policy
import html
import json
import re
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from conftest import wait_until
from webproject import (  # noqa: F401 - fixtures
    PASSWORD,
    TOKEN,
    Project,
    ServeFactory,
    make_project,
    project_fixture,
    serve_fixture,
)

from notifier.errors import UsageError
from notifier.jobs import load_jobs
from notifier.ledger import Ledger
from notifier.project import project_settings
from notifier.settings import Secret
from notifier.web.config import WebConfig, web_config
from notifier.web.security import FRAME_CSP, PAGE_CSP

UTC = timezone.utc


def notifier(project: Project, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "notifier", *args],
        cwd=project.root,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def email_links(page: str) -> list[str]:
    return sorted(set(re.findall(r'src="(/runs/[0-9a-f]+/emails/\d+/body)"', page)))


# --------------------------------------------------------------------------- pages


def test_jobs_page_shows_schedules_next_runs_last_outcome_and_alert_state(
    project: Project, serve: ServeFactory
) -> None:
    web = serve(project)
    report = load_jobs(project.jobs).get("report")
    expected = [t.strftime("%a %Y-%m-%d %H:%M %Z") for t in report.next_fire_times(count=5)]
    page = web.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == PAGE_CSP
    text = page.text
    assert "at 08:30, on Monday to Friday" in text and "30 8 * * 1-5" in text
    assert "Europe/Berlin" in text
    for when in expected:
        assert when in text
    assert f"/runs/{project.ok.run_id}" in text and f"/runs/{project.failed.run_id}" in text
    row = text.split('id="job-latency"', 1)[1].split("</tr>", 1)[0]
    assert "quiet" in row  # an alert job that never alerted
    assert "every 15 minutes" in row
    assert "Upcoming: the next 24 hours" in text and "<svg" in text


def test_runs_page_filters_by_job_and_status_and_pages(
    project: Project, serve: ServeFactory
) -> None:
    web = serve(project)
    everything = web.client.get("/runs").text
    assert project.ok.run_id in everything and project.failed.run_id in everything
    assert "team@example.com <b>delivered</b>" in everything
    broken = web.client.get("/runs", params={"job": "broken"}).text
    assert project.failed.run_id in broken and project.ok.run_id not in broken
    ok = web.client.get("/runs", params={"status": "succeeded"}).text
    assert project.ok.run_id in ok and project.failed.run_id not in ok
    assert web.client.get("/runs", params={"status": "nonsense"}).status_code == 400
    assert project.ok.run_id in web.client.get("/runs", params={"page": "99"}).text


def test_run_page_shows_the_emails_as_sent_the_output_and_the_log(
    project: Project, serve: ServeFactory
) -> None:
    web = serve(project)
    page = web.client.get(f"/runs/{project.ok.run_id}").text
    assert "Threshold 5 demo" in page and "team@example.com" in page
    assert "delivered" in page and "written to outbox" in page
    assert "<th>threshold</th><td><code>5</code>" in page  # the parameters it ran with
    # untrusted HTML only in sandboxed iframes that may not share the dashboard's origin
    frames = re.findall(r"<iframe[^>]*>", page)
    assert len(frames) == 2
    for frame in frames:
        assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in frame
        assert "allow-same-origin" not in frame and "allow-scripts" not in frame
    assert "Passed unknown parameter" in page or "worker log" in page.lower()

    output = web.client.get(f"/runs/{project.ok.run_id}/output.html")
    assert output.status_code == 200
    assert output.headers["content-security-policy"] == FRAME_CSP
    assert "Threshold" in output.text or "threshold" in output.text

    (body_url,) = email_links(page)
    body = web.client.get(body_url)
    assert body.headers["content-security-policy"] == FRAME_CSP
    assert "data:image/png;base64," in body.text  # the inline chart travels with the body
    assert "<b>threshold</b>" in body.text or "<strong>threshold</strong>" in body.text

    base = body_url.removesuffix("/body")
    attachment = web.client.get(f"{base}/attachments/0")
    assert attachment.status_code == 200
    assert attachment.headers["content-disposition"] == 'attachment; filename="data.csv"'
    assert attachment.text.splitlines()[0] == "a"
    assert web.client.get(f"{base}/attachments/9").status_code == 404
    eml = web.client.get(f"{base}.eml")
    message = email.message_from_bytes(eml.content, policy=email.policy.default)
    assert message["Subject"] == "Threshold 5 demo" and message["To"] == "team@example.com"
    assert eml.headers["content-disposition"].startswith("attachment;")
    # what the transport got (the outbox wrote what it was handed), but for the MIME
    # boundaries, which are drawn anew each time the message is written
    (delivery,) = web.client.get(f"/api/runs/{project.ok.run_id}").json()["deliveries"]
    sent = Path(delivery["location"]).with_suffix(".eml").read_bytes()

    def unbounded(data: bytes) -> bytes:
        names = set(re.findall(rb'boundary="([^"]+)"', data))
        for number, name in enumerate(sorted(names, key=data.index)):
            data = data.replace(name, b"BOUNDARY-%d" % number)
        return data

    assert unbounded(sent) == unbounded(eml.content)


def test_failed_run_page_shows_the_error_and_the_failing_cell(
    project: Project, serve: ServeFactory
) -> None:
    web = serve(project)
    page = web.client.get(f"/runs/{project.failed.run_id}").text
    assert "the data is late" in page
    assert "Failing cell: cell 3" in page
    assert "raise ValueError(&#39;the data is late&#39;)" in page
    assert "failure" in page  # the failure email to the job's recipients


def test_outbox_pages_show_the_messages_in_the_email_view(
    project: Project, serve: ServeFactory
) -> None:
    web = serve(project)
    listing = web.client.get("/outbox").text
    names = re.findall(r'href="/outbox/([^"/]+)"', listing)
    assert names and "Threshold 5 demo" in listing
    page = web.client.get(f"/outbox/{names[0]}").text
    assert 'src="/outbox/' in page and "sandbox=" in page
    body = web.client.get(f"/outbox/{names[0]}/body")
    assert body.headers["content-security-policy"] == FRAME_CSP


def test_unknown_things_are_404(project: Project, serve: ServeFactory) -> None:
    web = serve(project)
    assert web.client.get("/runs/0123456789abcdef").status_code == 404
    assert web.client.get("/jobs/nobody/run").status_code == 404
    assert web.client.get(f"/runs/{project.ok.run_id}/emails/999999/body").status_code == 404
    assert web.client.get("/api/runs/nope").json() == {
        "error": "No such run in the ledger (it may have been purged by keep_runs)."
    }


# ----------------------------------------------------------------------------- API


def test_the_api_and_history_json_agree(project: Project, serve: ServeFactory) -> None:
    web = serve(project)
    cli = notifier(project, "history", "--json", "--limit", "50")
    assert cli.returncode == 0, cli.stderr
    api = web.client.get("/api/runs", params={"limit": 50}).json()
    assert api["runs"] == json.loads(cli.stdout)
    assert api["total"] == len(api["runs"]) >= 2
    failed = notifier(project, "history", "broken", "--failed", "--json")
    assert web.client.get("/api/runs", params={"job": "broken", "failed": "1"}).json()[
        "runs"
    ] == json.loads(failed.stdout)


def test_api_run_and_jobs(project: Project, serve: ServeFactory) -> None:
    web = serve(project)
    run = web.client.get(f"/api/runs/{project.failed.run_id}").json()
    assert run["status"] == "failed" and run["failure"]["cell_number"] == 3
    assert run["progress"] is None
    jobs = web.client.get("/api/jobs").json()
    assert [j["name"] for j in jobs["jobs"]] == ["report", "broken", "latency"]
    report = jobs["jobs"][0]
    assert report["timezone"] == "Europe/Berlin" and len(report["next_fire_times"]) == 5
    assert report["last_run"]["run_id"] == project.ok.run_id
    assert jobs["errors"] is None
    assert web.client.get("/api/runs", params={"limit": "x"}).status_code == 400


# ---------------------------------------------------------------------------- Run now


def _finished(project: Project, run_id: str):
    ledger = project.ledger()
    try:
        run = ledger.get(run_id)
    finally:
        ledger.close()
    final = ("succeeded", "failed", "skipped", "suppressed", "interrupted")
    return run if run is not None and run.status in final else None


def test_run_now_with_a_parameter_and_dry_run(project: Project, serve: ServeFactory) -> None:
    web = serve(project)
    form = web.client.get("/jobs/report/run").text
    assert 'name="p.threshold" value="5"' in form  # from jobs.yaml
    assert 'name="p.label" value="demo"' in form  # the notebook's default
    assert "run_id" not in form and "scheduled_for" not in form
    done = web.client.post(
        "/jobs/report/run",
        data={"csrf": web.csrf(), "p.threshold": "7", "p.label": "demo", "dry_run": "1"},
    )
    assert done.status_code == 303
    run_id = done.headers["location"].rsplit("/", 1)[1]
    assert web.client.get(f"/runs/{run_id}").status_code == 200  # there at once
    run = wait_until(lambda: _finished(project, run_id), 120, "the run to finish")
    assert run.status == "succeeded", run.error
    assert run.manual and run.trigger == "manual"
    assert run.parameters == {"threshold": 7}  # typed as -p types it; label unchanged
    assert "Threshold 7 demo" in web.client.get(f"/runs/{run_id}").text


def test_run_now_runs_at_most_the_worker_count_at_once(
    project: Project, serve: ServeFactory
) -> None:
    web = serve(project, settings=project.settings.with_overrides(workers=1))
    run_ids = []
    for _ in range(2):
        done = web.client.post("/jobs/report/run", data={"csrf": web.csrf(), "dry_run": "1"})
        assert done.status_code == 303
        run_ids.append(done.headers["location"].rsplit("/", 1)[1])
    first, second = (
        wait_until(lambda r=r: _finished(project, r), 120, "the runs to finish") for r in run_ids
    )
    assert first.status == second.status == "succeeded"
    earlier, later = sorted((first, second), key=lambda run: run.started_at)
    assert later.started_at >= earlier.finished_at  # one worker: one notebook at a time


def test_run_now_refuses_what_notifier_run_p_refuses(project: Project, serve: ServeFactory) -> None:
    web = serve(project)
    before = web.client.get("/api/runs").json()["total"]
    page = web.client.post(
        "/jobs/report/run", data={"csrf": web.csrf(), "p.thresold": "7", "dry_run": "1"}
    )
    assert page.status_code == 400
    cli = notifier(project, "run", "report", "-p", "thresold", "7", "--dry-run")
    assert cli.returncode == 2
    message = cli.stderr.strip().removeprefix("error: ").splitlines()[0]
    assert "does not declare the parameter(s) thresold" in message
    assert html.escape(message, quote=True) in page.text or message in page.text
    assert web.client.get("/api/runs").json()["total"] == before


# --------------------------------------------------------------------------- security


def test_state_changing_requests_need_the_csrf_value(project: Project, serve: ServeFactory) -> None:
    web = serve(project)
    before = web.client.get("/api/runs").json()["total"]
    good = web.csrf()
    for data, headers in (
        ({"dry_run": "1"}, {}),
        ({"dry_run": "1", "csrf": "x" * 32}, {}),
        ({"dry_run": "1", "csrf": good}, {"Origin": "http://evil.example"}),
        ({"dry_run": "1", "csrf": good}, {"Origin": "null"}),
    ):
        answer = web.client.post("/jobs/report/run", data=data, headers=headers)
        assert answer.status_code == 403, (data, headers)
    assert web.client.post("/settings/test", data={}).status_code == 403
    # GET never changes anything
    assert web.client.get("/jobs/report/run").status_code == 200
    assert web.client.get("/jobs/report/run", params={"dry_run": "1"}).status_code == 200
    assert web.client.get("/api/runs").json()["total"] == before
    assert web.client.post("/", data={"csrf": good}).status_code == 405


def test_paths_from_the_ledger_must_lie_inside_the_runs_folder(
    project: Project, serve: ServeFactory, tmp_path: Path
) -> None:
    secret = project.root / "secret.html"
    secret.write_text("TOP-SECRET outside the runs folder", encoding="utf-8")
    runs = project.settings.runs_dir
    # a run folder whose output.html and worker.log are symlinks to the secret
    folder = runs / "evil" / "20260101T000000Z-feedfacefeedface"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text("{}")
    (folder / "output.ipynb").write_text("{}")
    (folder / "output.html").symlink_to(secret)
    (folder / "worker.log").symlink_to(secret)
    ledger = Ledger(project.settings.db_url)
    made = []
    try:
        for output in (
            str(runs / ".." / "secret.html"),
            "../secret.html",
            "/etc/passwd",
            str(folder / "output.ipynb"),
        ):
            run = ledger.claim("evil", datetime.now(UTC), trigger="manual")
            assert run is not None and ledger.mark_running(run.run_id, run.attempt)
            assert ledger.finish(run.run_id, "failed", attempt=run.attempt, output_path=output)
            made.append(run.run_id)
    finally:
        ledger.close()
    web = serve(project)
    for run_id in made:
        frame = web.client.get(f"/runs/{run_id}/output.html")
        assert "TOP-SECRET" not in frame.text and "root:" not in frame.text
        assert "TOP-SECRET" not in web.client.get(f"/runs/{run_id}").text
        assert web.client.get(f"/runs/{run_id}/worker.log").status_code == 404
    for path in (
        "/outbox/..%2Fsecret",
        "/outbox/%2e%2e%2fsecret.html",
        "/outbox/..%2F..%2Fetc%2Fpasswd",
        "/outbox/../secret.html",
        "/runs/..%2F..%2Fetc%2Fpasswd/output.html",
        "/static/..%2F..%2F..%2Fsettings.py",
    ):
        answer = web.client.get(path)
        assert answer.status_code == 404, path
        assert "TOP-SECRET" not in answer.text and "root:" not in answer.text


def test_only_loopback_host_names_are_served_without_a_token(
    project: Project, serve: ServeFactory
) -> None:
    web = serve(project)
    assert web.client.get("/", headers={"Host": "evil.example"}).status_code == 403
    assert web.client.get("/", headers={"Host": f"localhost:{web.server.port}"}).status_code == 200


def test_a_token_is_required_once_set(project: Project, serve: ServeFactory) -> None:
    web = serve(project, config=WebConfig(port=0, token=TOKEN))
    assert web.server.url.endswith(f"?token={TOKEN}")
    login = web.client.get("/")
    assert login.status_code == 401 and "needs its token" in login.text
    assert web.client.get("/", params={"token": "wrong" * 4}).status_code == 401
    assert web.client.get("/api/runs").status_code == 401
    assert web.client.get(f"/runs/{project.ok.run_id}/output.html").status_code == 401
    entry = web.client.get("/runs", params={"token": TOKEN, "job": "report"})
    assert entry.status_code == 303 and entry.headers["location"] == "/runs?job=report"
    cookie = entry.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    assert web.client.get("/runs?job=report").status_code == 200  # the cookie now
    bearer = httpx.get(
        web.url + "/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert bearer.status_code == 200


def test_other_addresses_always_get_a_token() -> None:
    assert web_config(None, None, {}).token is None  # 127.0.0.1
    generated = web_config("0.0.0.0", 8765, {})
    assert generated.token and generated.token_generated and len(generated.token) >= 24
    assert "?token=" in generated.url() and generated.token not in repr(generated)
    given = web_config("0.0.0.0", 8765, {"NOTIFIER_WEB_TOKEN": TOKEN})
    assert given.token == TOKEN and not given.token_generated
    with pytest.raises(UsageError, match="too short"):
        web_config("0.0.0.0", 8765, {"NOTIFIER_WEB_TOKEN": "short"})
    with pytest.raises(
        UsageError, match="NOTIFIER_WEB_PORT=.eighty. is not a whole number; allowed: 0 to 65535"
    ):
        web_config(None, None, {"NOTIFIER_WEB_PORT": "eighty"})


def test_no_secret_in_any_page(project: Project, serve: ServeFactory) -> None:
    settings = project.settings.with_overrides(
        host="127.0.0.1", port=9, user="me@example.com", password=Secret(PASSWORD), timeout=2.0
    )
    web = serve(project, settings=settings, config=WebConfig(port=0, token=TOKEN))
    web.client.headers["Authorization"] = f"Bearer {TOKEN}"
    ok, failed = project.ok.run_id, project.failed.run_id
    pages = ["/", "/runs", f"/runs/{ok}", f"/runs/{failed}", "/outbox", "/settings"]
    pages += ["/jobs/report/run", f"/runs/{ok}/output.html", f"/runs/{failed}/output.html"]
    pages += ["/api/runs", f"/api/runs/{ok}", "/api/jobs", "/runs/nope", f"/runs/{ok}/worker.log"]
    body_urls = email_links(web.client.get(f"/runs/{ok}").text)
    texts = [web.client.get(path).text for path in pages + body_urls]
    settings_page = texts[pages.index("/settings")]
    assert "<th>SMTP_PASSWORD</th><td>set</td>" in settings_page
    tested = web.client.post("/settings/test", data={"csrf": web.csrf()}).text
    assert "TCP" in tested and "FAIL" in tested  # port 9 on loopback refuses
    for text in [*texts, tested]:
        assert PASSWORD not in text
        assert TOKEN not in text


# ------------------------------------------------------------------- jobs.yaml, CLI


def test_an_invalid_jobs_file_shows_validates_errors_and_what_still_runs(
    serve: ServeFactory, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "p")
    from webproject import Project as P

    project = P(root, project_settings(root, smtp=False), None, None)  # type: ignore[arg-type]
    web = serve(project)
    assert "report" in web.client.get("/").text
    jobs = root / "jobs.yaml"
    jobs.write_text(jobs.read_text().replace("schedule: {every: 1h}", "schedul: {every: 1h}"))
    validate = notifier(project, "validate", str(jobs))
    assert validate.returncode == 2
    page = web.client.get("/").text
    for line in validate.stderr.strip().splitlines()[1:]:
        assert line.strip() in html.unescape(page)
    assert "jobs.yaml:" in page and "Still running: the last good file" in page
    assert 'id="job-report"' in page  # the last good file's jobs are still listed
    assert web.client.get("/api/jobs").json()["errors"]


def test_notifier_web_exits_2_when_the_port_is_in_use(project: Project) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = notifier(project, "web", "--port", str(port), timeout=60)
    assert done.returncode == 2
    assert "the port is in use" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "\n  fix: pass --port" in done.stderr


@pytest.mark.slow
def test_notifier_schedule_serves_the_dashboard_and_survives_a_taken_port(
    project: Project, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        log = tmp_path / "taken.log"
        env = {**project.env(), "NOTIFIER_WEB_PORT": str(port)}
        with open(log, "wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "notifier", "schedule", "jobs.yaml"],
                cwd=project.root,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: "running; stop with" in log.read_text(), 60, "the daemon to run")
            text = log.read_text()
            warnings = [line for line in text.splitlines() if "dashboard not started" in line]
            assert len(warnings) == 1 and "port is in use" in warnings[0]
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(60)
    log = tmp_path / "served.log"
    env = {**project.env(), "NOTIFIER_WEB_PORT": "0"}
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notifier", "schedule", "jobs.yaml"],
            cwd=project.root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = wait_until(
            lambda: re.search(r"dashboard: (http://\S+)", log.read_text()), 60, "the URL"
        ).group(1)
        assert log.read_text().count("dashboard: ") == 1
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and 'id="job-report"' in page.text
        assert httpx.get(url + "api/runs", timeout=30).json()["total"] >= 2
        no_web = notifier(project, "schedule", "--help")
        assert "--no-web" in no_web.stdout
    finally:
        proc.terminate()
        assert proc.wait(60) == 0


def test_a_parameter_holding_the_password_is_hidden_and_run_now_refuses_it(
    serve: ServeFactory, tmp_path: Path
) -> None:
    root = make_project(tmp_path)
    jobs = (root / "jobs.yaml").read_text(encoding="utf-8")
    jobs = jobs.replace("parameters: {threshold: 5}", f"parameters: {{label: 'x {PASSWORD}'}}")
    (root / "jobs.yaml").write_text(jobs, encoding="utf-8")
    settings = project_settings(root, smtp=False).with_overrides(password=Secret(PASSWORD))
    with Ledger(settings.db_url) as ledger:  # as a ledger written before the refusal kept it
        old = ledger.claim(
            "report",
            datetime(2026, 1, 5, 7, 30, tzinfo=UTC),
            parameters={"label": f"x {PASSWORD}", "nested": [{"k": PASSWORD}]},
        )
        assert old is not None
        ledger.finish(old.run_id, "failed", error="an old run")
    project = Project(root, settings, old, old)
    web = serve(project, settings=settings)
    form = web.client.get("/jobs/report/run").text
    assert 'name="p.label" value="x ***"' in form
    refused = web.client.post(
        "/jobs/report/run", data={"csrf": web.csrf(), "p.label": "x ***", "dry_run": "1"}
    )
    assert refused.status_code == 400
    assert "contains the SMTP password" in refused.text
    runs = web.client.get("/api/runs").json()
    assert [r["run_id"] for r in runs["runs"]] == [old.run_id]  # Run now claimed nothing
    assert runs["runs"][0]["parameters"] == {"label": "x ***", "nested": [{"k": "***"}]}
    page = web.client.get(f"/runs/{old.run_id}").text
    assert "<th>label</th><td><code>x ***</code>" in page
    for text in [form, refused.text, page, web.client.get(f"/api/runs/{old.run_id}").text]:
        assert PASSWORD not in text
    env = project.env() | {"SMTP_PASSWORD": PASSWORD}
    history = subprocess.run(
        [sys.executable, "-m", "notifier", "history", "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert history.returncode == 0, history.stderr
    assert PASSWORD not in history.stdout
    assert json.loads(history.stdout)[0]["parameters"]["label"] == "x ***"


def test_a_ledger_url_is_shown_without_its_password(
    serve: ServeFactory, tmp_path: Path, postgres_url: str
) -> None:
    """A PostgreSQL ledger with no tables yet: the jobs page names the URL, not its password
    (the test cluster trusts local connections, so any password connects)."""
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    root = make_project(tmp_path)
    settings = project_settings(root, smtp=False).with_overrides(db_url=url)
    project = Project(root, settings, None, None)  # type: ignore[arg-type] - nothing ran
    web = serve(project, settings=settings)
    page = web.client.get("/").text
    assert PASSWORD not in page
    shown = make_url(url).render_as_string(hide_password=True)
    assert f"Ledger: {html.escape(shown)}" in page and ":***@" in shown
    assert PASSWORD not in web.client.get("/settings").text


@pytest.mark.parametrize("token", ["configured", "generated"])
def test_notifier_web_prints_only_a_generated_token(
    project: Project, tmp_path: Path, token: str
) -> None:
    """stdout is the journal under systemd: a configured NOTIFIER_WEB_TOKEN stays out of it;
    a token made for this run is printed in the URL (nobody else could know it)."""
    env = project.env()
    if token == "configured":
        env["NOTIFIER_WEB_TOKEN"] = TOKEN
    log = tmp_path / "web.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notifier", "web", "--host", "0.0.0.0", "--port", "0"],
            cwd=project.root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        line = wait_until(
            lambda: re.search(r"dashboard: .*", log.read_text()), 60, "the URL"
        ).group(0)
        url = re.match(r"dashboard: (http://\S+)", line).group(1)
        if token == "configured":
            assert line.endswith("/ (token from NOTIFIER_WEB_TOKEN)"), line
            assert "token=" not in url
            page = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            assert page.status_code == 200
        else:
            assert "?token=" in url and "a token was generated" in log.read_text()
            assert httpx.get(url, timeout=30, follow_redirects=True).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    assert TOKEN not in log.read_text()


def test_pause_and_resume_buttons_hold_a_job_in_the_ledger(
    project: Project, serve: ServeFactory
) -> None:
    web = serve(project)
    page = web.client.get("/").text
    assert 'action="/jobs/report/pause"' in page
    refused = web.client.post("/jobs/report/pause", data={"csrf": "forged"})
    assert refused.status_code == 403
    done = web.client.post("/jobs/report/pause", data={"csrf": web.csrf()})
    assert done.status_code == 303
    ledger = project.ledger()
    try:
        assert set(ledger.paused()) == {"report"}  # every node reads it there
        assert ledger.paused()["report"]["paused_by"].startswith("dashboard@")
        page = web.client.get("/").text
        assert 'action="/jobs/report/resume"' in page and "s-paused" in page
        assert notifier(project, "list").stdout.count("paused") >= 1  # as the CLI shows it
        done = web.client.post("/jobs/report/resume", data={"csrf": web.csrf()})
        assert done.status_code == 303
        assert ledger.paused() == {}
    finally:
        ledger.close()
    assert web.client.post("/jobs/nope/pause", data={"csrf": web.csrf()}).status_code == 404
