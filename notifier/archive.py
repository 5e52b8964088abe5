"""HTML renderings of executed notebooks, and scrubbing secrets from archived files."""

from __future__ import annotations

from pathlib import Path

from notifier.config import redact


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


def preload_renderer() -> None:
    """Import nbconvert and load its templates (done while the kernel works)."""
    from nbconvert import HTMLExporter

    HTMLExporter(template_name="lab").template  # noqa: B018 - loads and caches the template


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
