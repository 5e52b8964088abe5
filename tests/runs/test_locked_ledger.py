"""A ledger locked by another process (longer than SQLite's 10 s busy timeout) while a run
records itself: the run waits, keeps its result in memory and loses nothing.

Real kernels, a real SQLite file and a real process holding ``BEGIN EXCLUSIVE`` on it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from notebooks import write_notebook
from notifier.ledger import Ledger
from notifier.mail.transport.memory import MemoryTransport
from notifier.runs.path import RunPath, adhoc_job
from notifier.settings import parse_settings

pytestmark = pytest.mark.slow

BUSY_TIMEOUT = 10  # seconds a SQLite write of the ledger waits for the lock, then fails

LOCKER = """\
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def lock(database: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the SQLite write lock for ``seconds`` (returns once held)."""
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(database), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    return locker


class LockedAfterTheCheck(Ledger):
    """A real ledger that another process locks right after the run checked (``holds``)
    that its slot is still its own: every write of the run's outcome meets the lock, held
    for more than two busy timeouts (the run files, then the outcome, each time out)."""

    locker: subprocess.Popen[str] | None = None

    def holds(self, run_id: str, attempt: int | None = None) -> bool:
        held = super().holds(run_id, attempt)
        if self.locker is None:
            self.locker = lock(Path(self.url.removeprefix("sqlite:///")), 2 * BUSY_TIMEOUT + 2)
        return held


def settings_in(folder: Path):
    return parse_settings(
        {"NOTIFIER_RUNS_DIR": str(folder / "runs"), "NOTIFIER_OUTBOX": str(folder / "outbox")}
    )


NOTEBOOKS = {
    "fails": "from notifier import report\nraise RuntimeError('the source is down')",
    "skips": "from notifier import report\nreport.skip('nothing new')",
}


@pytest.mark.parametrize("kind", sorted(NOTEBOOKS))
def test_a_ledger_locked_after_the_notebook_ran_delays_the_records_but_loses_none(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    notebook = write_notebook(tmp_path / f"{kind}.ipynb", NOTEBOOKS[kind])
    job = adhoc_job(notebook, name=kind, to=["boss@example.com"])
    transport = MemoryTransport()
    caplog.set_level(logging.WARNING, logger="notifier")
    with LockedAfterTheCheck(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        path = RunPath(settings_in(tmp_path), ledger, transports=lambda _kind: transport)
        result = path.run_now(job)
        assert ledger.locker is not None and ledger.locker.wait(60) == 0
        stored = ledger.get(result.run.run_id)
        kept = ledger.run_file_names(result.run.run_id)
    assert stored is not None
    if kind == "fails":
        assert (stored.status, stored.error) == (
            "failed",
            "cell 2 raised RuntimeError: the source is down",
        )
        assert [m.subject for m in transport.sent] == [
            "[notifier] FAILED: fails: cell 2 raised RuntimeError: the source is down"
        ]
        assert "failure.json" in kept
    else:
        assert (stored.status, stored.notes) == ("skipped", "nothing new")
        assert transport.sent == []
    assert {"output.html", "worker.log"} <= set(kept)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("the ledger is unavailable while ") for m in messages), messages
    assert any(m.startswith("the ledger is available again") for m in messages), messages
    assert not any(r.exc_info for r in caplog.records)


def test_a_run_now_whose_ledger_is_locked_before_it_starts_waits_and_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The dashboard's Run now: claimed first, executed next; a lock in between waits."""
    notebook = write_notebook(
        tmp_path / "daily.ipynb",
        "from notifier import report\nreport.email('Daily', to='boss@example.com').text('hi')",
    )
    job = adhoc_job(notebook, name="daily")
    transport = MemoryTransport()
    caplog.set_level(logging.WARNING, logger="notifier")
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        path = RunPath(settings_in(tmp_path), ledger, transports=lambda _kind: transport)
        run = path.claim_now(job)
        locker = lock(tmp_path / "ledger.db", BUSY_TIMEOUT + 2)
        result = path.execute_claimed(job, run)
        assert locker.wait(30) == 0
    assert result.run.status == "succeeded", result.run
    assert [m.subject for m in transport.sent] == ["Daily"]
    assert not any(r.exc_info for r in caplog.records)
