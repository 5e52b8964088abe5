"""OutboxTransport on a real folder: concurrent senders, unwritable folders, results."""

from __future__ import annotations

import os
import re
import threading
from email.message import EmailMessage
from pathlib import Path

import pytest

from notifier.mail.transport import transport_for
from notifier.mail.transport.base import Outgoing, RecipientResult, SendResult
from notifier.mail.transport.memory import MemoryTransport
from notifier.mail.transport.outbox import OutboxTransport
from notifier.settings import parse_settings

pytestmark = pytest.mark.timeout(60)

SENDER = "reports@example.com"


def make(n: int = 0, subject: str | None = None) -> Outgoing:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = "alice@example.com"
    message["Subject"] = subject or f"report {n}"
    message["Message-ID"] = f"<report-{n}@example.com>"
    message.set_content(f"Hello from report {n}.\n")
    return Outgoing(message, SENDER, ("alice@example.com", "boss@example.com"))


def listed(folder: Path) -> list[str]:
    """The preview pages index.html links to."""
    return re.findall(r'<td><a href="([^"]+\.html)">', (folder / "index.html").read_text())


# -- concurrent senders ------------------------------------------------------------------------


def test_threads_sending_to_one_outbox_keep_every_message(tmp_path):
    folder = tmp_path / "outbox"
    errors: list[BaseException] = []
    results: list[SendResult] = []
    start = threading.Barrier(4)

    def worker(thread: int) -> None:
        transport = OutboxTransport(folder)  # one per thread, like the scheduler does
        start.wait()
        try:
            for i in range(25):
                # the same subject everywhere: stems must still not collide within a second
                results.extend(transport.send([make(thread * 100 + i, subject="daily sales")]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(results) == 100 and all(r.ok for r in results)
    emls = sorted(folder.glob("*.eml"))
    pages = sorted(p for p in folder.glob("*.html") if p.name != "index.html")
    assert len(emls) == 100 and len(pages) == 100
    assert {p.stem for p in pages} == {e.stem for e in emls}
    assert sorted(listed(folder)) == sorted(p.name for p in pages)
    assert "100 message(s)" in (folder / "index.html").read_text()
    assert list(folder.glob("*.tmp")) == [] and list(folder.glob(".*")) == []


def test_written_files_follow_the_umask(tmp_path):
    [result] = OutboxTransport(tmp_path).send([make()])
    old = os.umask(0o022)
    os.umask(old)
    expected = 0o666 & ~old
    for path in (Path(result.location), Path(result.location).with_suffix(".eml")):
        assert path.stat().st_mode & 0o777 == expected


# -- a folder that cannot be written -----------------------------------------------------------


@pytest.mark.parametrize("where", ["the folder is a file", "under a file"])
def test_unwritable_outbox_is_a_result_not_an_exception(tmp_path, where):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the outbox should be")
    folder = blocker if where == "the folder is a file" else blocker / "outbox"
    settings = parse_settings({"NOTIFIER_OUTBOX": str(folder)})
    transport = transport_for(settings)
    assert isinstance(transport, OutboxTransport)
    seen: list[tuple[int, SendResult]] = []

    results = transport.send([make(1), make(2)], lambda i, r: seen.append((i, r)))

    assert [i for i, _ in seen] == [0, 1] and [r for _, r in seen] == results
    for result in results:
        assert not result.ok and result.accepted == [] and result.location is None
        assert str(folder.absolute()) in result.error
        assert "Fix: set NOTIFIER_OUTBOX to a writable folder" in result.error
        os_error = "File exists" if folder == blocker else "Not a directory"
        assert os_error in result.error
        assert any(line.startswith("  FAILED: Cannot save") for line in result.summary_lines())
    if folder == blocker:
        assert "it is a file, not a folder" in results[0].error
    assert blocker.read_text() == "a file where the outbox should be"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders"
)
def test_read_only_outbox_folder(tmp_path):
    folder = tmp_path / "outbox"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        [result] = OutboxTransport(folder).send([make()])
    finally:
        folder.chmod(0o700)
    assert "Permission denied" in result.error and "NOTIFIER_OUTBOX" in result.error
    assert list(folder.iterdir()) == []


# -- results -----------------------------------------------------------------------------------


def test_all_accepted_result_is_shared_by_outbox_and_memory(tmp_path):
    out = make(7)
    expected = SendResult.all_accepted(out, "memory", 250, "kept in memory")
    assert expected.ok and expected.message_id == out.message_id
    assert expected.subject == out.subject and expected.location is None
    assert expected.recipients == [
        RecipientResult("alice@example.com", True, 250, "kept in memory"),
        RecipientResult("boss@example.com", True, 250, "kept in memory"),
    ]
    assert MemoryTransport().send([out]) == [expected]

    [saved] = OutboxTransport(tmp_path).send([out])
    assert saved == SendResult.all_accepted(
        out, "outbox", None, "written to outbox", location=saved.location
    )
    assert Path(saved.location).is_file() and saved.location.endswith(".html")
