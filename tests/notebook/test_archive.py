"""notifier.notebook.archive: the run's output as HTML and as PDF (headless Chromium), read back.

The PDF is read back with poppler-utils: ``pdftotext`` finds the report's text and
``pdfimages -list`` shows that the chart is an image, not lost or rasterised text.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil
import pytest
from tools import need, need_browser

from notebooks import WorkerRun, run_worker, write_notebook
from notifier.errors import RunError
from notifier.notebook.archive import BROWSER_ENV, output_attachment, render_pdf

REPORT_CELLS = [
    """
    import matplotlib.pyplot as plt
    from notifier import report
    HIDDEN_CODE_MARKER = 1
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([1, 2, 3, 4], [3, 1, 4, 2], color="#2f5597")
    ax.set_title("Orders per day")
    mail = report.email("Weekly numbers for the team", to="team@example.com")
    mail.markdown("Orders rose **12 percent** this week.")
    mail.chart(fig, alt="orders chart")
    plt.close(fig)
    """,
]


@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> WorkerRun:
    folder = tmp_path_factory.mktemp("archive")
    notebook = write_notebook(
        folder / "weekly.ipynb",
        *REPORT_CELLS,
        parameters=None,
        markdown="# Weekly operations report\n\nNumbers for the team.",
    )
    run = run_worker(folder, notebook, {"run_id": "pdf-test"}, hide_code=True)
    assert run.result["status"] == "ok", run.result
    return run


def pdf_text(pdf: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, timeout=60
    ).stdout


def pdf_images(pdf: Path) -> list[list[str]]:
    listing = subprocess.run(
        ["pdfimages", "-list", str(pdf)], capture_output=True, text=True, timeout=60
    ).stdout
    return [line.split() for line in listing.splitlines()[2:] if line.strip()]


def test_pdf_of_the_archived_output_has_the_text_and_the_chart_as_an_image(report_run, tmp_path):
    need_browser()
    need("pdftotext", "pdfimages")
    pdf = render_pdf(report_run.html, tmp_path / "weekly.pdf", timeout=120)
    assert pdf == (tmp_path / "weekly.pdf").resolve()
    assert pdf.read_bytes().startswith(b"%PDF-")
    text = pdf_text(pdf)
    assert "Weekly operations report" in text  # the notebook's heading
    assert "Weekly numbers for the team" in text  # the email's preview
    assert "Orders rose 12 percent this week." in " ".join(text.split())
    assert "HIDDEN_CODE_MARKER" not in text  # rendered with hide_code: no code
    images = pdf_images(pdf)
    assert len(images) == 1, images
    page, _, kind, width, height = images[0][:5]
    assert kind == "image" and int(width) >= 400 and int(height) >= 200  # the 6x3 in chart


def test_output_attachment_as_html_or_pdf(report_run):
    need_browser()
    html_part = output_attachment(report_run.html, "html", "weekly-output")
    assert (html_part.filename, html_part.mime_type) == ("weekly-output.html", "text/html")
    assert html_part.data == report_run.html.read_bytes()
    pdf_part = output_attachment(report_run.html, "pdf", "weekly-output", timeout=120)
    assert (pdf_part.filename, pdf_part.mime_type) == ("weekly-output.pdf", "application/pdf")
    assert pdf_part.data.startswith(b"%PDF-")
    assert report_run.html.with_suffix(".pdf").read_bytes() == pdf_part.data
    with pytest.raises(ValueError, match="attach_output must be 'html' or 'pdf'"):
        output_attachment(report_run.html, "docx", "x")  # type: ignore[arg-type]


def test_no_browser_is_one_clear_error(tmp_path, monkeypatch):
    page = tmp_path / "page.html"
    page.write_text("<h1>x</h1>", encoding="utf-8")
    monkeypatch.delenv(BROWSER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find
    with pytest.raises(RunError) as raised:
        render_pdf(page, tmp_path / "out.pdf")
    assert raised.value.message.startswith("No Chromium or Chrome found to print the PDF")
    assert "apt-get install chromium" in raised.value.fix
    assert "attach_output: html" in raised.value.fix
    monkeypatch.setenv(BROWSER_ENV, str(tmp_path / "no-such-browser"))
    with pytest.raises(RunError, match="NOTIFIER_BROWSER='.*no-such-browser' is not an executable"):
        render_pdf(page, tmp_path / "out.pdf")
    assert not (tmp_path / "out.pdf").exists()


def test_a_browser_that_fails_is_one_clear_error(tmp_path, monkeypatch):
    page = tmp_path / "page.html"
    page.write_text("<h1>x</h1>", encoding="utf-8")
    monkeypatch.setenv(BROWSER_ENV, "false")  # exits 1 and prints nothing
    with pytest.raises(RunError, match=r"false could not print page.html to PDF \(exit 1\)\."):
        render_pdf(page, tmp_path / "out.pdf")


def test_a_browser_past_the_timeout_is_killed(tmp_path):
    need_browser()
    page = tmp_path / "page.html"  # a page that never finishes: nothing is ever printed
    page.write_text("<h1>x</h1><script>while (true) {}</script>", encoding="utf-8")
    started, wall = time.monotonic(), time.time()
    with pytest.raises(RunError, match=r"took longer than 4 s; the browser was killed"):
        render_pdf(page, tmp_path / "out.pdf", timeout=4)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out.pdf").exists()
    leftovers = []  # browser processes this test started (their command lines name the profile)
    for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
        try:
            if proc.info["create_time"] < wall - 1 or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any("notifier-pdf-" in part for part in proc.info["cmdline"] or []):
                leftovers.append(proc.info["cmdline"][:2])
        except psutil.Error:
            continue
    assert leftovers == []
