"""Renderings of executed notebooks (HTML, PDF), and scrubbing secrets from archived files.

PDFs are printed by headless Chromium from the archived HTML: it lays out nbconvert's
lab template exactly as a browser (and the dashboard) shows it, charts stay images, and
Debian, Ubuntu, Homebrew and the Chrome installers all ship it. The browser runs with
the network off, a throwaway profile, a clean environment and a timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from notifier.errors import RunError
from notifier.mail.parts import Part
from notifier.settings import kernel_environment, redact

BROWSER_ENV = "NOTIFIER_BROWSER"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PDF_TIMEOUT = 60.0
OutputFormat = Literal["html", "pdf"]

# Printed pages: A4 with a margin, and nothing wider than the page.
_PRINT_STYLE = (
    "<style>@page { size: A4; margin: 12mm; } "
    "@media print { img, svg, table { max-width: 100% !important; } "
    "body { -webkit-print-color-adjust: exact; print-color-adjust: exact; } }</style>"
)


def render_html(notebook_path: Path, html_path: Path, *, hide_code: bool = False) -> Path:
    """Write an HTML rendering of ``notebook_path`` (nbconvert's lab template).

    ``hide_code=True`` leaves out every code cell's input and the In/Out prompts: the
    reader sees the markdown and the outputs (tables, charts, the emails' previews).
    """
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(notebook_path, as_version=4)
    exporter = HTMLExporter(
        template_name="lab",
        exclude_input=hide_code,
        exclude_input_prompt=hide_code,
        exclude_output_prompt=hide_code,
    )
    body, _ = exporter.from_notebook_node(notebook)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def preload_renderer(*, warm_up: bool = False) -> None:
    """Import nbconvert and load its templates (done while the kernel works).

    ``warm_up``: also render a small notebook, which fills the caches a first rendering
    fills (about 0.2 s saved at the run; a prepared worker does it before its slot).
    """
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    exporter.template  # noqa: B018 - loads and caches the template
    if warm_up:
        import nbformat
        from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

        cell = new_code_cell("x = 1\nx", execution_count=1)
        cell.outputs = [new_output("execute_result", {"text/plain": "1"}, execution_count=1)]
        notebook = new_notebook(cells=[new_markdown_cell("# warm-up"), cell])
        notebook.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        notebook.metadata["language_info"] = {"name": "python"}
        try:
            exporter.from_notebook_node(nbformat.from_dict(notebook))
        except Exception:  # noqa: BLE001 - only a warm-up: the real rendering reports errors
            pass


def find_browser() -> str | None:
    """The Chromium/Chrome executable: ``NOTIFIER_BROWSER``, else the first on PATH."""
    chosen = os.environ.get(BROWSER_ENV, "").strip()
    if chosen:
        return shutil.which(chosen) or (chosen if os.access(chosen, os.X_OK) else None)
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _missing_browser() -> RunError:
    chosen = os.environ.get(BROWSER_ENV, "").strip()
    cause = (
        f"{BROWSER_ENV}={chosen!r} is not an executable browser"
        if chosen
        else f"No Chromium or Chrome found to print the PDF (looked for {', '.join(BROWSER_NAMES)})"
    )
    return RunError(
        f"{cause}.",
        "install Chromium (Debian/Ubuntu: sudo apt-get install chromium; macOS: brew install "
        f"--cask chromium), or set {BROWSER_ENV} to a Chrome/Chromium executable; or use "
        "attach_output: html",
    )


def render_pdf(html_path: Path, pdf_path: Path, *, timeout: float = PDF_TIMEOUT) -> Path:
    """Print ``html_path`` (an archived output.html) to ``pdf_path`` with headless Chromium.

    Render from HTML that has already been scrubbed of secrets: a PDF cannot be
    scrubbed afterwards. Raises RunError (cause and fix) when no browser is installed,
    when it fails, or when it takes longer than ``timeout`` seconds (it is killed then).
    """
    from notifier.notebook.processes import kill_tree

    browser = find_browser()
    if browser is None:
        raise _missing_browser()
    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path).resolve()
    with tempfile.TemporaryDirectory(prefix="notifier-pdf-") as scratch:
        page = Path(scratch) / "page.html"
        text = html_path.read_text(encoding="utf-8")
        head_end = text.find("</head>")
        text = (
            text[:head_end] + _PRINT_STYLE + text[head_end:]
            if head_end >= 0
            else _PRINT_STYLE + text
        )
        page.write_text(text, encoding="utf-8")
        target = Path(scratch) / "out.pdf"
        command = [
            browser,
            "--headless",
            "--no-sandbox",  # as root, and in containers without user namespaces
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: CDN scripts fail at once
            f"--user-data-dir={Path(scratch) / 'profile'}",
            "--no-pdf-header-footer",
            "--print-to-pdf-no-header",
            f"--print-to-pdf={target}",
            page.as_uri(),
        ]
        environment = kernel_environment()  # the browser needs no SMTP credentials
        environment["HOME"] = scratch  # nothing written to the real home folder
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        except OSError as error:
            raise RunError(
                f"Could not start {browser} to print the PDF: {error.strerror or error}.",
                f"check the browser installation, or set {BROWSER_ENV}",
            ) from None
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.communicate()
            raise RunError(
                f"Printing {html_path.name} to PDF took longer than {timeout:g} s; the browser "
                "was killed.",
                "check that the output is not huge, or use attach_output: html",
            ) from None
        if proc.returncode != 0 or not target.is_file() or target.read_bytes()[:5] != b"%PDF-":
            tail = " ".join(output.decode("utf-8", "replace").strip().splitlines()[-3:])
            raise RunError(
                f"{Path(browser).name} could not print {html_path.name} to PDF "
                f"(exit {proc.returncode}){': ' + tail if tail else ''}.",
                f"run it by hand to see why, or set {BROWSER_ENV} to another Chrome/Chromium",
            )
        pdf_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(target), pdf_path)
    return pdf_path


def output_attachment(
    html_path: Path, kind: OutputFormat, filename: str, *, timeout: float = PDF_TIMEOUT
) -> Part:
    """The run's rendered output as an attachment: ``filename`` + ``.html`` or ``.pdf``.

    ``html_path`` is the archived output.html (scrubbed; rendered with ``hide_code`` as the
    job says). For ``pdf`` the PDF is written beside it (``output.pdf``) and attached.
    """
    html_path = Path(html_path)
    if kind == "html":
        return Part(html_path.read_bytes(), "text/html", f"{filename}.html")
    if kind == "pdf":
        pdf = render_pdf(html_path, html_path.with_suffix(".pdf"), timeout=timeout)
        return Part(pdf.read_bytes(), "application/pdf", f"{filename}.pdf")
    raise ValueError(f"attach_output must be 'html' or 'pdf', not {kind!r}")


def scrub_file(path: Path, secrets: list[str]) -> bool:
    """Replace any secret found in a text file by ``***``; True when something was replaced."""
    if not secrets or not path.is_file():
        return False
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    cleaned = redact(text, secrets)
    if cleaned == text:
        return False
    path.write_text(cleaned, encoding="utf-8", errors="surrogateescape")
    return True
