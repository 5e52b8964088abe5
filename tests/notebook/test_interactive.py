"""The email and send_test in a real Jupyter kernel: what a notebook cell shows.

One kernel runs the cells of one notebook (as JupyterLab would, through nbclient); the
archived HTML of that notebook is then opened in headless Chromium to read the styles
JupyterLab's stylesheet leaves on the preview.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient
from smtp_server import Behaviour, SMTPTestServer
from tools import need_browser

from notebooks import write_notebook
from notifier.notebook.archive import render_html
from notifier.notebook.bundle import DEFAULT_RECIPIENTS_ENV, EMAIL_MIME
from notifier.notebook.engine import IPCKernelManager

CELLS = [
    # 0: the email shows itself when created; as the cell's last line it adds nothing more
    """
    from notifier import report
    email = report.email("Hi", to="x@example.com")
    email.text("hello")
    email.attach(b"a,b\\n1,2\\n", "data.csv")
    email
    """,
    # 1: in a later cell it shows once more
    "email",
    # 2: a change updates both views in place
    'email.text("more")',
    # 3: one line per recipient, once
    'email.send_test("me@example.com")',
    # 4, 5: kept and shown later
    'sent = email.send_test("me@example.com")\nprint("after")',
    "sent",
    # 6: a refused address: one exception with the fix, nothing else
    'email.send_test("bad@example.com")',
    # 7: an email naming nobody shows the run's recipients
    'for_job = report.email("For the job")\nfor_job.text("x")',
]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    project = tmp_path_factory.mktemp("lab")
    with SMTPTestServer("plain", behaviour=Behaviour(refuse=["bad@example.com"])) as server:
        (project / ".env").write_text(
            f"SMTP_HOST=127.0.0.1\nSMTP_PORT={server.port}\nSMTP_SECURITY=none\n"
            "SMTP_FROM=reports@example.com\nSMTP_TIMEOUT=5\nSMTP_RETRIES=0\n",
            encoding="utf-8",
        )
        path = write_notebook(project / "lab.ipynb", *CELLS, parameters=None)
        notebook = nbformat.read(path, as_version=4)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "NOTIFIER_"))}
        env[DEFAULT_RECIPIENTS_ENV] = json.dumps(
            {"to": ["boss@example.com"], "cc": [], "bcc": ["audit@example.com"]}
        )
        env["MPLBACKEND"] = "Agg"
        client = NotebookClient(
            notebook,
            timeout=60,
            startup_timeout=60,
            kernel_name="python3",
            kernel_manager_class=IPCKernelManager,
            allow_errors=True,
            resources={"metadata": {"path": str(project)}},
        )
        client.execute(env=env)
        nbformat.write(notebook, str(path))
    return notebook, path, server


def outputs(notebook, cell: int) -> list[dict]:
    return notebook.cells[cell].outputs


def test_an_email_as_the_last_line_shows_once(executed):
    notebook, _, _ = executed
    [created] = outputs(notebook, 0)
    assert created.output_type == "display_data"
    [again] = outputs(notebook, 1)  # a later cell: one more view
    assert again.output_type == "display_data"
    assert outputs(notebook, 2) == []  # a change updates the views, adds none
    for view in (created, again):
        bundle = view.data[EMAIL_MIME]
        assert bundle["html"] == "<p>hello</p>\n<p>more</p>"
        assert "<p>more</p>" in view.data["text/html"]


def test_send_test_shows_one_line_per_recipient_once(executed):
    notebook, _, server = executed
    [line] = outputs(notebook, 3)
    assert (line.output_type, line.name) == ("stream", "stdout")
    assert line.text == "accepted: me@example.com via smtp (250 2.0.0 OK: queued)\n"
    assert "".join(o.text for o in outputs(notebook, 4)) == (
        "accepted: me@example.com via smtp (250 2.0.0 OK: queued)\nafter\n"
    )
    [shown] = outputs(notebook, 5)
    assert shown.text == "accepted: me@example.com via smtp (250 2.0.0 OK: queued)\n"
    assert server.delivered_to("me@example.com") == 2


def test_a_failed_send_test_raises_one_clear_error(executed):
    notebook, _, server = executed
    [error] = outputs(notebook, 6)  # no log line on stderr, no summary on stdout
    assert error.output_type == "error"
    assert error.ename == "SendTestError"
    message = (
        "The test email was not delivered: bad@example.com was refused (550 5.1.1 "
        "<bad@example.com>: Recipient address rejected: User unknown)."
    )
    assert error.evalue == f"{message}\n  fix: check the recipient address"
    assert error.traceback == [f"SendTestError: {message}", "  fix: check the recipient address"]
    assert server.delivered_to("bad@example.com") == 0
    assert notebook.cells[7].outputs[0].output_type == "display_data"  # the cell after ran


def test_the_preview_shows_the_runs_recipients_and_links_the_attachments(executed):
    notebook, _, _ = executed
    [view] = outputs(notebook, 7)
    page = view.data["text/html"]
    assert ">boss@example.com</td>" in page
    assert "audit@example.com  (envelope only, not in headers)" in page
    assert view.data["text/plain"].startswith("<ReportEmail 'For the job' to boss@example.com:")
    assert view.data[EMAIL_MIME]["to"] == []
    email_page = outputs(notebook, 0)[0].data["text/html"]
    href = re.search(r'<a href="data:text/csv;base64,([^"]+)" download="data.csv"', email_page)
    assert base64.b64decode(href.group(1)) == b"a,b\n1,2\n"


_PROBE = """<script>
const found = [...document.querySelectorAll('.notifier-email')].map(card => {
  const cells = [...card.querySelector('table').querySelectorAll('th, td')];
  return {
    cells: cells.map(c => [c.textContent, getComputedStyle(c).textAlign]),
    layout: getComputedStyle(card.querySelector('table')).tableLayout,
    backgrounds: [...new Set(cells.map(c => getComputedStyle(c).backgroundColor))],
    link: [...card.querySelectorAll('a[download]')].map(a => a.getAttribute('download')),
  };
});
const out = document.createElement('pre');
out.id = 'probe';
out.textContent = JSON.stringify(found);
document.body.appendChild(out);
</script>"""


def test_jupyterlab_styles_do_not_realign_the_preview(executed, tmp_path):
    # nbconvert's lab template carries JupyterLab's stylesheet (td, th: text-align right;
    # striped rows; fixed table layout): the archived HTML shows what Lab shows.
    browser = need_browser()
    _, path, _ = executed
    page = render_html(path, tmp_path / "output.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    found = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)[1]))
    assert len(found) >= 3  # the email's views and the job's email
    for card in found:
        assert card["layout"] == "auto"
        assert card["backgrounds"] == ["rgb(246, 248, 250)"]
        aligned = {name: align for name, align in card["cells"]}
        assert set(aligned.values()) == {"left"}, aligned
    assert found[0]["link"] == ["data.csv"]
