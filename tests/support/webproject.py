"""Dashboard tests: a project with real runs, and the dashboard serving it (fixtures).

The project (module-scoped: kernels are slow) has a report notebook whose output and email
carry hostile HTML (a ``<script>`` and an ``<img onerror>``), an inline chart and an
attachment, a notebook that fails in its second cell, and a jobs.yaml with a crontab job in
Europe/Berlin. The dashboard runs in-process (uvicorn in a thread, port 0) on that project. Test modules
import ``project_fixture`` and ``serve_fixture`` (fixtures named ``project`` and ``serve``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from notebooks import write_notebook
from notifier.jobs import load_jobs
from notifier.ledger import Ledger, Run
from notifier.project import project_settings
from notifier.runs.path import RunPath
from notifier.settings import Settings
from notifier.web.config import WebConfig
from notifier.web.server import WebServer
from notifier.web.state import Dashboard

PASSWORD = "pw-Do-Not-Show-7f3a9c"
TOKEN = "tok-Do-Not-Show-5b2e8d41"

HOSTILE = (
    "<script>document.body.setAttribute('data-ran', 'yes');"
    "try { parent.document.title = 'pwned'; } catch (e) {}"
    "try { top.pwned = 1; } catch (e) {}</script>"
    "<img id='evil' src='nothing-here' onerror=\"document.body.setAttribute('data-onerror', 'yes');"
    "try { parent.document.title = 'pwned'; } catch (e) {}\">"
)

REPORT_PARAMETERS = 'threshold = 1\npause = 0.0\nlabel = "demo"'
REPORT_CELLS = [
    "import time\ntime.sleep(pause)",
    "time.sleep(pause)",
    f"from IPython.display import HTML, display\ndisplay(HTML({HOSTILE!r}))",
    """\
import matplotlib.pyplot as plt
import pandas as pd
from notifier import report

time.sleep(pause)
fig, ax = plt.subplots(figsize=(4, 3))
ax.plot([1, 2, 3], [threshold, threshold * 2, threshold * 3])
mail = report.email(f"Threshold {threshold} {label}")
mail.markdown(f"**threshold** is {threshold}")
mail.chart(fig)
mail.html(HOSTILE_HTML)
mail.attach(pd.DataFrame({"a": [1, 2]}), "data.csv")
""",
]

JOBS = """\
defaults:
  timezone: Europe/Berlin
  to: team@example.com
jobs:
  - name: report
    notebook: notebooks/report.ipynb
    schedule: "30 8 * * 1-5"
    parameters: {threshold: 5}
  - name: broken
    notebook: notebooks/broken.ipynb
    schedule: {every: 1h}
  - name: latency
    notebook: notebooks/report.ipynb
    schedule: "*/15 * * * *"
    cooldown: 1h
    notify_recovery: true
"""


@dataclass
class Project:
    root: Path
    settings: Settings
    ok: Run
    failed: Run

    @property
    def jobs(self) -> Path:
        return self.root / "jobs.yaml"

    def ledger(self) -> Ledger:
        return Ledger(self.settings.db_url, create=False)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "NOTIFIER_"))}
        env["PYTHONUNBUFFERED"] = "1"
        return env


def make_project(root: Path) -> Path:
    """The project files (notebooks, jobs.yaml) without any run."""
    cells = [c.replace("HOSTILE_HTML", repr(HOSTILE)) for c in REPORT_CELLS]
    write_notebook(root / "notebooks" / "report.ipynb", *cells, parameters=REPORT_PARAMETERS)
    write_notebook(
        root / "notebooks" / "broken.ipynb",
        "y = x + 1",
        "raise ValueError('the data is late')",
        parameters="x = 1",
    )
    (root / "jobs.yaml").write_text(JOBS, encoding="utf-8")
    return root


@pytest.fixture(scope="module", name="project")
def project_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    root = make_project(tmp_path_factory.mktemp("webproject"))
    settings = project_settings(root, smtp=False)
    jobs = {job.name: job for job in load_jobs(root / "jobs.yaml").jobs}
    ledger = Ledger(settings.db_url)
    try:
        runner = RunPath(settings, ledger)
        ok = runner.run_now(jobs["report"]).run
        failed = runner.run_now(jobs["broken"]).run
    finally:
        ledger.close()
    assert ok.status == "succeeded", ok.error
    assert failed.status == "failed"
    yield Project(root, settings, ok, failed)


@dataclass
class Served:
    server: WebServer
    client: httpx.Client
    dashboard: Dashboard

    @property
    def url(self) -> str:
        return self.server.base_url.rstrip("/")

    def csrf(self) -> str:
        self.client.get("/")
        (value,) = [v for k, v in self.client.cookies.items() if k.startswith("notifier_csrf_")]
        return value


ServeFactory = Callable[..., Served]


@pytest.fixture(name="serve")
def serve_fixture() -> Iterator[ServeFactory]:
    """``serve(project, settings=None, config=None)`` -> a dashboard on a free port."""
    started: list[Served] = []

    def make(
        project: Project, *, settings: Settings | None = None, config: WebConfig | None = None
    ) -> Served:
        dashboard = Dashboard(project.jobs, settings or project.settings)
        server = WebServer(dashboard, config or WebConfig(port=0)).start()
        client = httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False)
        served = Served(server, client, dashboard)
        started.append(served)
        return served

    yield make
    for served in started:
        served.client.close()
        served.server.stop()
        served.dashboard.close()
