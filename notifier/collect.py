"""Read back, from an executed notebook, the emails it declared and whether it skipped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notifier.errors import RunError
from notifier.message import Email, InlineImage
from notifier.parts import Part
from notifier.report import EMAIL_MIME, SKIP_MIME, decode_part


@dataclass
class Collected:
    """What an executed notebook declared."""

    emails: list[Email] = field(default_factory=list)
    skip_reason: str | None = None
    skip_cell: int | None = None


def _outputs(notebook: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    found = []
    for index, cell in enumerate(notebook.get("cells", [])):
        for output in cell.get("outputs", []) or []:
            data = output.get("data")
            if isinstance(data, dict):
                found.append((index, data))
    return found


def collect(output_notebook: Path, parts_dir: Path | None) -> Collected:
    """The emails (latest revision of each, in order of creation) and the skip marker."""
    notebook = json.loads(output_notebook.read_text(encoding="utf-8"))
    latest: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    collected = Collected()
    for index, data in _outputs(notebook):
        if SKIP_MIME in data and collected.skip_reason is None:
            collected.skip_reason = str(data[SKIP_MIME].get("reason", ""))
            collected.skip_cell = index
        bundle = data.get(EMAIL_MIME)
        if not isinstance(bundle, dict) or "email_id" not in bundle:
            continue
        email_id = bundle["email_id"]
        if email_id not in latest:
            order.append(email_id)
        if email_id not in latest or bundle.get("revision", 0) >= latest[email_id]["revision"]:
            latest[email_id] = bundle
    collected.emails = [_email_from_bundle(latest[i], parts_dir) for i in order]
    return collected


def _part(entry: dict[str, Any], parts_dir: Path | None) -> Part:
    try:
        data = decode_part(entry, parts_dir)
    except (OSError, ValueError) as error:
        raise RunError(
            f"A part of an email could not be read back: {error}.",
            "keep the run folder intact until delivery; re-run the job",
        ) from None
    return Part(data, entry["mime_type"], entry["filename"])


def _email_from_bundle(bundle: dict[str, Any], parts_dir: Path | None) -> Email:
    html = bundle.get("html")
    return Email(
        subject=bundle.get("subject", ""),
        to=list(bundle.get("to", [])),
        cc=list(bundle.get("cc", [])),
        bcc=list(bundle.get("bcc", [])),
        reply_to=list(bundle.get("reply_to", [])),
        sender=bundle.get("sender"),
        html=html,
        text=None if html is not None else "",
        images=[InlineImage(e["cid"], _part(e, parts_dir)) for e in bundle.get("images", [])],
        attachments=[_part(e, parts_dir) for e in bundle.get("attachments", [])],
        key=bundle.get("key") or None,
    )
