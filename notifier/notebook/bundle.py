"""The email bundle protocol, shared by the kernel side and the runner.

In a notebook, :mod:`notifier.notebook.report` shows each email as a display output of
MIME type :data:`EMAIL_MIME` (its headers, HTML and part entries) and writes the parts'
bytes into the run's ``parts/`` folder (:data:`PARTS_DIR_ENV`), named by sha256. After the
run, :func:`collect` reads the latest revision of each email back from the output
notebook, so the archive records exactly what was sent, and checks every part against
its sha256. :data:`SKIP_MIME` marks ``report.skip()``. The environment variables here are
how the runner talks to the kernel (the kernel never reads ``.env``).

A notebook can keep an output from the notebook (``%%capture``) or remove it
(``clear_output()``), so the kernel side also records every revision of an email, and
the skip, as files in ``parts/`` (:func:`record_email`, :func:`record_skip`); ``collect``
takes each email from both channels, once, in its latest revision.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notifier.errors import RunError
from notifier.mail.model import Email, InlineImage
from notifier.mail.parts import Part

EMAIL_MIME = "application/vnd.notifier.email+json"
SKIP_MIME = "application/vnd.notifier.skip+json"
PARTS_DIR_ENV = "NOTIFIER_PARTS_DIR"
RUN_ID_ENV = "NOTIFIER_RUN_ID"
FROM_ENV = "NOTIFIER_FROM"
# JSON {"to": [...], "cc": [...], "bcc": [...]}: the run's recipients for emails that name
# none, set by the runner so the preview (and the archive) shows who gets them.
DEFAULT_RECIPIENTS_ENV = "NOTIFIER_DEFAULT_RECIPIENTS"
FORMAT_VERSION = 1
# in the parts folder: one JSON file per email (its latest bundle), and the skip marker
EMAILS_RECORD_DIR = "emails"
SKIP_RECORD = "skip.json"


def in_scheduled_run() -> bool:
    """True when the notebook runs under ``notifier run`` / the scheduler."""
    return bool(os.environ.get(RUN_ID_ENV))


def part_entry(part: Part, parts_dir: str | None) -> dict[str, Any]:
    """A part's bundle entry; its bytes go to ``parts_dir`` (named by sha256), never inline."""
    digest = hashlib.sha256(part.data).hexdigest()
    entry: dict[str, Any] = {
        "filename": part.filename,
        "mime_type": part.mime_type,
        "size": len(part.data),
        "sha256": digest,
    }
    if parts_dir:
        suffix = Path(part.filename).suffix
        stored = Path(parts_dir) / f"{digest}{suffix}"
        if not stored.exists():
            stored.parent.mkdir(parents=True, exist_ok=True)
            tmp = stored.with_name(stored.name + ".tmp")
            tmp.write_bytes(part.data)
            os.replace(tmp, stored)
        entry["file"] = stored.name
    return entry


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def record_email(bundle: dict[str, Any], sequence: int, parts_dir: str | None) -> None:
    """Kernel side: keep ``bundle`` (the email's latest revision) in ``parts_dir``.

    The runner reads it even when the email's display output never reached the output
    notebook; ``sequence`` orders the emails as the notebook created them.
    """
    if not parts_dir:
        return
    path = Path(parts_dir) / EMAILS_RECORD_DIR / f"{bundle['email_id']}.json"
    _write_json(path, dict(bundle, sequence=sequence))


def record_skip(reason: str, parts_dir: str | None) -> None:
    """Kernel side: note ``report.skip(reason)`` in ``parts_dir`` (the first skip counts)."""
    if not parts_dir:
        return
    path = Path(parts_dir) / SKIP_RECORD
    if not path.exists():
        _write_json(path, {"reason": reason})


def default_recipients_environment(
    to: Iterable[str] = (), cc: Iterable[str] = (), bcc: Iterable[str] = ()
) -> dict[str, str]:
    """The variable the runner sets for the kernel: the run's recipients for emails that
    name none, so their previews (and the archived output) show who gets them."""
    value = {"to": list(to), "cc": list(cc), "bcc": list(bcc)}
    return {DEFAULT_RECIPIENTS_ENV: json.dumps(value, ensure_ascii=False)}


def decode_part(entry: dict[str, Any], parts_dir: Path | None) -> bytes:
    """The bytes of a stored part, checked against its sha256 (runner side)."""
    if "data" in entry:
        data = base64.b64decode(entry["data"])
    elif entry.get("file") and parts_dir is not None:
        data = (parts_dir / entry["file"]).read_bytes()
    else:
        raise FileNotFoundError(f"the bytes of {entry.get('filename')!r} were not stored")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"{entry.get('filename')!r} changed after the run (sha256 mismatch)")
    return data


@dataclass
class Collected:
    """What an executed notebook declared."""

    emails: list[Email] = field(default_factory=list)
    skip_reason: str | None = None
    skip_cell: int | None = None
    # subjects of emails the output notebook does not show (%%capture, clear_output())
    not_shown: list[str] = field(default_factory=list)


def _outputs(notebook: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    found = []
    for index, cell in enumerate(notebook.get("cells", [])):
        for output in cell.get("outputs", []) or []:
            data = output.get("data")
            if isinstance(data, dict):
                found.append((index, data))
    return found


def _recorded(parts_dir: Path | None) -> tuple[list[dict[str, Any]], str | None]:
    """The email bundles (in order of creation) and the skip reason the kernel recorded."""
    if parts_dir is None:
        return [], None
    bundles = []
    for path in sorted((parts_dir / EMAILS_RECORD_DIR).glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(bundle, dict) and "email_id" in bundle:
            bundles.append(bundle)
    bundles.sort(key=lambda bundle: bundle.get("sequence", 0))
    skip = parts_dir / SKIP_RECORD
    reason = None
    if skip.is_file():
        reason = str(json.loads(skip.read_text(encoding="utf-8")).get("reason", ""))
    return bundles, reason


def collect(output_notebook: Path, parts_dir: Path | None) -> Collected:
    """The emails (latest revision of each, in order of creation) and the skip marker.

    Emails and the skip come from the output notebook's display bundles and from what the
    kernel recorded in ``parts_dir``, so an output kept from the notebook (``%%capture``)
    or cleared (``clear_output()``) loses nothing; each email counts once.
    """
    notebook = json.loads(output_notebook.read_text(encoding="utf-8"))
    recorded, recorded_skip = _recorded(parts_dir)
    latest: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    shown: set[str] = set()
    collected = Collected()

    def add(bundle: dict[str, Any]) -> None:
        email_id = bundle["email_id"]
        if email_id not in latest:
            order.append(email_id)
        if email_id not in latest or bundle.get("revision", 0) >= latest[email_id]["revision"]:
            latest[email_id] = bundle

    for bundle in recorded:  # first: they are in order of creation
        add(bundle)
    for index, data in _outputs(notebook):
        if SKIP_MIME in data and collected.skip_reason is None:
            collected.skip_reason = str(data[SKIP_MIME].get("reason", ""))
            collected.skip_cell = index
        bundle = data.get(EMAIL_MIME)
        if isinstance(bundle, dict) and "email_id" in bundle:
            add(bundle)
            shown.add(bundle["email_id"])
    if collected.skip_reason is None:
        collected.skip_reason = recorded_skip
    collected.emails = [_email_from_bundle(latest[i], parts_dir) for i in order]
    collected.not_shown = [str(latest[i].get("subject", "")) for i in order if i not in shown]
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
