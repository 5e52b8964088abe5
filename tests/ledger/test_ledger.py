"""Ledger tests on real SQLite files and real PostgreSQL databases (``db_url`` runs each
test on both), with real subprocesses for concurrency and crashes."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
from ledgers import expire_lease, run_sql

from notifier.errors import NotifierError
from notifier.ledger import SCHEMA_VERSION, Ledger, LedgerError, Run

ROOT = Path(__file__).resolve().parents[2]
UTC = timezone.utc
T0 = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)

MakeLedger = Callable[..., Ledger]


@pytest.fixture
def make_ledger(db_url: str) -> Iterator[MakeLedger]:
    opened: list[Ledger] = []

    def make(**kwargs: object) -> Ledger:
        ledger = Ledger(db_url, **kwargs)  # type: ignore[arg-type]
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: MakeLedger) -> Ledger:
    return make_ledger()


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


class Clock:
    """A settable clock for Ledger(clock=...)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def race(count: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in ``count`` threads released together; return results in order."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return results


def finished_run(ledger: Ledger, job: str, slot: datetime, status: str, **kw: str) -> Run:
    run = ledger.claim(job, slot)
    assert run is not None
    assert ledger.finish(run.run_id, status, **kw)
    done = ledger.get(run.run_id)
    assert done is not None
    return done


# ------------------------------------------------------------------ claiming


def test_claim_twice_second_returns_none(ledger: Ledger) -> None:
    first = ledger.claim("daily", T0, recipients=["a@example.com", "b@example.com"])
    assert first is not None
    assert first.job == "daily"
    assert first.slot == T0
    assert first.status == "claimed"
    assert first.trigger == "schedule"
    assert first.attempt == 1
    assert first.owner == ledger.owner
    assert first.recipients == ("a@example.com", "b@example.com")
    assert first.manual is False
    assert ledger.claim("daily", T0) is None
    assert ledger.claim("daily", T0, trigger="catch_up") is None
    assert [r.run_id for r in ledger.history()] == [first.run_id]


def test_two_owners_on_one_file_exactly_one_wins(make_ledger: MakeLedger) -> None:
    a = make_ledger(owner="host-a:1:1-a")
    b = make_ledger(owner="host-b:2:2-b")
    won_a = a.claim("daily", T0)
    won_b = b.claim("daily", T0)
    assert won_a is not None and won_a.owner == "host-a:1:1-a"
    assert won_b is None
    stored = b.find("daily", T0)
    assert stored is not None and stored.owner == "host-a:1:1-a"
    # the next slot is free for whoever comes first
    later = b.claim("daily", T0 + timedelta(days=1))
    assert later is not None and later.owner == "host-b:2:2-b"


def test_threads_with_separate_ledgers_claim_each_slot_once(make_ledger: MakeLedger) -> None:
    ledgers = [make_ledger(owner=f"thread-host:{i}:0-x") for i in range(4)]

    def claim_all(i: int) -> list[int]:
        slots = (T0 + timedelta(minutes=n) for n in range(30))
        return [n for n, slot in enumerate(slots) if ledgers[i].claim("t", slot) is not None]

    won = race(len(ledgers), claim_all)
    assert sorted(n for ns in won for n in ns) == list(range(30))  # type: ignore[attr-defined]


def test_timestamps_are_aware_utc_and_zones_compare_by_instant(ledger: Ledger) -> None:
    berlin_summer = timezone(timedelta(hours=2))
    local = datetime(2024, 5, 6, 10, 0, tzinfo=berlin_summer)  # == T0
    run = ledger.claim("daily", local)
    assert run is not None
    assert run.slot == T0
    assert run.slot.tzinfo is UTC
    assert run.slot.hour == 8
    assert ledger.claim("daily", T0) is None  # same instant written in UTC
    assert ledger.mark_running(run.run_id)
    assert ledger.finish(run.run_id, "succeeded")
    stored = ledger.get(run.run_id)
    assert stored is not None
    for value in (
        stored.slot,
        stored.claimed_at,
        stored.started_at,
        stored.finished_at,
        stored.heartbeat_at,
    ):
        assert value is not None
        assert value.tzinfo is UTC
    assert stored.claimed_at <= stored.started_at <= stored.finished_at  # type: ignore[operator]
    assert ledger.last_slot("daily") == T0
    assert ledger.last_slot("daily").tzinfo is UTC  # type: ignore[union-attr]
    # microseconds survive the round trip
    precise = T0 + timedelta(seconds=1, microseconds=123456)
    again = ledger.claim("daily", precise)
    assert again is not None and ledger.get(again.run_id).slot == precise  # type: ignore[union-attr]


def test_naive_datetimes_and_bad_values_are_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.claim("daily", datetime(2024, 5, 6, 8, 0))
    with pytest.raises(ValueError, match="trigger"):
        ledger.claim("daily", T0, trigger="cron")
    run = ledger.claim("daily", T0)
    assert run is not None
    with pytest.raises(ValueError, match="status"):
        ledger.finish(run.run_id, "running")
    with pytest.raises(TypeError, match="summary"):
        ledger.finish(run.run_id, "failed", error=RuntimeError("raw exception"))  # type: ignore[arg-type]
    assert ledger.get(run.run_id).status == "claimed"  # type: ignore[union-attr]


def test_manual_runs_never_take_a_scheduled_slot(ledger: Ledger) -> None:
    manual = ledger.claim("daily", T0, trigger="manual")
    assert manual is not None and manual.manual is True and manual.slot == T0
    scheduled = ledger.claim("daily", T0)
    assert scheduled is not None and scheduled.manual is False and scheduled.slot == T0
    # a second manual request in the same microsecond is moved by one microsecond
    manual2 = ledger.claim("daily", T0, trigger="manual")
    assert manual2 is not None
    assert manual2.slot == T0 + timedelta(microseconds=1)
    assert ledger.claim("daily", T0) is None
    # manual runs do not count as scheduled slots
    assert ledger.claim("daily", T0 + timedelta(hours=1), trigger="manual") is not None
    assert ledger.last_slot("daily") == T0
    assert ledger.find("daily", T0).run_id == scheduled.run_id  # type: ignore[union-attr]
    assert ledger.find("daily", T0, manual=True).run_id == manual.run_id  # type: ignore[union-attr]


def test_returned_values_are_frozen_plain_data(ledger: Ledger) -> None:
    run = ledger.claim("daily", T0)
    assert run is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.status = "succeeded"  # type: ignore[misc]
    ledger.close()
    assert run.job == "daily"  # still readable without a database


CLAIMER = """
import json, sys
from datetime import datetime, timedelta, timezone
from notifier.ledger import Ledger

url, count = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
ledger = Ledger(url)  # all processes also race to create the schema
base = datetime(2024, 1, 1, tzinfo=timezone.utc)
won = [n for n in range(count) if ledger.claim("race", base + timedelta(minutes=n)) is not None]
print(json.dumps({"owner": ledger.owner, "won": won}), flush=True)
"""


def test_processes_racing_on_one_ledger_claim_each_slot_exactly_once(
    db_url: str, tmp_path: Path
) -> None:
    slots, workers = 50, 4
    procs = [spawn(CLAIMER, db_url, str(slots)) for _ in range(workers)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # release them as close together as possible
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert "locked" not in err, err
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    won = [n for result in results for n in result["won"]]
    assert sorted(won) == list(range(slots))  # every slot once, none twice
    owners = {result["owner"] for result in results}
    assert len(owners) == workers

    with Ledger(db_url) as check:
        rows = check.history("race", limit=None)
        assert len(rows) == slots
        assert len({r.slot for r in rows}) == slots
        assert {r.owner for r in rows} <= owners
        by_owner = {r["owner"]: set(r["won"]) for r in results}
        base = datetime(2024, 1, 1, tzinfo=UTC)
        for row in rows:
            assert int((row.slot - base).total_seconds() // 60) in by_owner[row.owner]
    if db_url.startswith("sqlite"):
        journal = sqlite3.connect(tmp_path / "ledger.db").execute("PRAGMA journal_mode")
        assert journal.fetchone() == ("wal",)


# ------------------------------------------------------------------ reclaim


def interrupted_run(ledger: Ledger, job: str = "daily", slot: datetime = T0) -> Run:
    run = ledger.claim(job, slot)
    assert run is not None
    assert ledger.mark_running(run.run_id)
    assert ledger.finish(run.run_id, "interrupted", error="killed")
    return run


def test_reclaim_is_compare_and_set(make_ledger: MakeLedger) -> None:
    a = make_ledger(owner="host-a:1:1-a")
    b = make_ledger(owner="host-b:2:2-b")
    run = interrupted_run(a)
    first = b.reclaim(run.run_id, trigger="retry")
    second = a.reclaim(run.run_id, trigger="retry")
    assert first is not None and second is None
    assert first.run_id == run.run_id
    assert first.attempt == 2
    assert first.owner == "host-b:2:2-b"
    assert first.status == "claimed"
    assert first.trigger == "retry"
    assert first.error is None
    assert first.notes == "attempt 1 interrupted: killed"
    assert first.slot == T0
    # the old owner can no longer touch it
    assert a.finish(run.run_id, "succeeded") is False
    assert a.heartbeat(run.run_id) is False
    assert b.mark_running(run.run_id) is True
    assert b.finish(run.run_id, "failed", error="notebook raised ValueError")
    # a failed run may be retried again; a stale attempt number is refused
    assert a.reclaim(run.run_id, trigger="retry", attempt=1) is None
    third = a.reclaim(run.run_id, trigger="retry", attempt=2)
    assert third is not None and third.attempt == 3 and third.owner == "host-a:1:1-a"
    assert third.notes == "attempt 2 failed: notebook raised ValueError"
    # history keeps one row per slot
    assert [r.attempt for r in a.history()] == [3]


def test_reclaim_race_between_threads_has_one_winner(make_ledger: MakeLedger) -> None:
    ledgers = [make_ledger(owner=f"host-{i}:{i}:0-x") for i in range(4)]
    for n in range(10):
        run = interrupted_run(ledgers[0], slot=T0 + timedelta(days=n))
        results = race(
            len(ledgers),
            lambda i, run_id=run.run_id: ledgers[i].reclaim(run_id, trigger="retry"),
        )
        winners = [r for r in results if isinstance(r, Run)]
        assert results.count(None) == len(ledgers) - 1
        assert len(winners) == 1
        assert winners[0].attempt == 2
        stored = ledgers[0].get(run.run_id)
        assert stored is not None and stored.owner == winners[0].owner


def test_reclaim_refuses_active_and_finished_runs(ledger: Ledger) -> None:
    active = ledger.claim("daily", T0)
    assert active is not None
    assert ledger.reclaim(active.run_id, trigger="retry") is None
    done = finished_run(ledger, "daily", T0 + timedelta(days=1), "succeeded")
    assert ledger.reclaim(done.run_id, trigger="retry") is None
    assert ledger.reclaim("no-such-run", trigger="retry") is None
    assert ledger.get(active.run_id).attempt == 1  # type: ignore[union-attr]


def test_finish_and_heartbeat_only_for_the_owner(make_ledger: MakeLedger) -> None:
    clock = Clock(T0)
    a = make_ledger(owner="host-a:1:1-a", clock=clock)
    b = make_ledger(owner="host-b:2:2-b")
    run = a.claim("daily", T0, recipients=["ops@example.com"])
    assert run is not None
    assert b.mark_running(run.run_id) is False
    clock.now = T0 + timedelta(seconds=5)
    assert a.mark_running(run.run_id) is True
    assert a.mark_running(run.run_id) is False  # already running
    assert b.heartbeat(run.run_id) is False
    clock.now = T0 + timedelta(seconds=7)
    assert a.heartbeat(run.run_id) is True
    assert b.finish(run.run_id, "succeeded") is False
    clock.now = T0 + timedelta(seconds=12.5)
    assert a.finish(
        run.run_id,
        "suppressed",
        output_path="runs/daily/out.ipynb",
        alert_key="abc123",
        notes="suppressed by cooldown until 09:00",
    )
    stored = b.get(run.run_id)
    assert stored is not None
    assert stored.status == "suppressed"
    assert stored.claimed_at == T0
    assert stored.started_at == T0 + timedelta(seconds=5)
    assert stored.heartbeat_at == T0 + timedelta(seconds=7)
    assert stored.finished_at == T0 + timedelta(seconds=12.5)
    assert stored.duration_s == 7.5
    assert stored.output_path == "runs/daily/out.ipynb"
    assert stored.alert_key == "abc123"
    assert stored.notes == "suppressed by cooldown until 09:00"
    assert stored.error is None
    assert a.finish(run.run_id, "failed") is False  # already finished


# ------------------------------------------------------------------ recovery

HOLDER = """
import sys, time
from datetime import datetime, timezone
from notifier.ledger import Ledger

ledger = Ledger(sys.argv[1])
run = ledger.claim(sys.argv[2], datetime.fromisoformat(sys.argv[3]))
ledger.mark_running(run.run_id)
print(run.run_id, flush=True)
time.sleep(120)
"""


def test_recover_interrupted_after_sigkill_but_not_live_owner(db_url: str, ledger: Ledger) -> None:
    doomed = spawn(HOLDER, db_url, "doomed", T0.isoformat())
    zombie = spawn(HOLDER, db_url, "zombie", T0.isoformat())
    alive = spawn(HOLDER, db_url, "alive", T0.isoformat())
    procs = (doomed, zombie, alive)
    try:
        ids = []
        for proc in procs:
            assert proc.stdout is not None
            ids.append(proc.stdout.readline().strip())
        doomed_id, zombie_id, alive_id = ids
        assert all(ids), [p.stderr.read() for p in procs if p.stderr]  # type: ignore[union-attr]
        doomed.kill()  # SIGKILL: no cleanup code runs
        doomed.wait(30)  # reaped: the pid no longer exists
        zombie.kill()  # killed but not reaped: the pid still exists, as a zombie
        deadline = time.monotonic() + 30
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = ledger.get(doomed_id)
        assert before is not None and before.status == "running"

        recovered = ledger.recover_interrupted()
        assert sorted(r.run_id for r in recovered) == sorted([doomed_id, zombie_id])
        assert {r.status for r in recovered} == {"interrupted"}
        by_id = {r.run_id: r for r in recovered}
        assert by_id[doomed_id].owner == before.owner
        assert by_id[doomed_id].error == f"node {before.owner}: process {doomed.pid} is gone"
        assert ledger.get(alive_id).status == "running"  # type: ignore[union-attr]
        assert ledger.recover_interrupted() == []  # nothing left to take

        # the interrupted slot can be re-attempted, the live one cannot
        again = ledger.reclaim(doomed_id, trigger="retry")
        assert again is not None and again.attempt == 2 and again.owner == ledger.owner
        assert ledger.reclaim(alive_id, trigger="retry") is None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def test_recover_detects_reused_pid_by_start_time(make_ledger: MakeLedger, db_url: str) -> None:
    previous = make_ledger(owner="old-node")
    sibling = make_ledger()  # another Ledger in this very process: alive
    me = make_ledger()
    gone = previous.claim("daily", T0)
    live = sibling.claim("daily", T0 + timedelta(days=1))
    assert gone is not None and live is not None
    # the old node had this very pid but started at another time: a previous process
    # whose pid we inherited (a restarted container's pid 1); its lease is still valid
    run_sql(db_url, "UPDATE nodes SET process_start_ms = 1000 WHERE node_id = 'old-node'")
    recovered = me.recover_interrupted()
    assert [r.run_id for r in recovered] == [gone.run_id]
    assert "process" in (recovered[0].error or "") and "is gone" in (recovered[0].error or "")
    assert me.get(live.run_id).status == "claimed"  # type: ignore[union-attr]


def test_pids_are_not_trusted_across_hosts_or_pid_namespaces(
    make_ledger: MakeLedger, db_url: str
) -> None:
    """Two containers with one hostname but separate pid namespaces: only leases count."""
    elsewhere = make_ledger(owner="container-b")
    me = make_ledger()
    run = elsewhere.claim("daily", T0)
    assert run is not None
    # its pid means nothing here (it may be a pid that does not exist in this namespace)
    run_sql(
        db_url,
        "UPDATE nodes SET host_key = 'boot:other-namespace', pid = 999999 "
        "WHERE node_id = 'container-b'",
    )
    assert me.recover_interrupted() == []  # its lease is valid: alive, whatever the pid


def test_recover_runs_of_nodes_whose_lease_ran_out(make_ledger: MakeLedger, db_url: str) -> None:
    stale_node = make_ledger(owner="node-7")
    busy_node = make_ledger(owner="node-8")
    me = make_ledger()
    stale = stale_node.claim("alert", T0)
    busy = busy_node.claim("alert", T0 + timedelta(minutes=5))
    assert stale is not None and busy is not None
    assert busy_node.mark_running(busy.run_id)
    # neither renewed its lease for a long time (the same process: its pid is alive)
    expire_lease(db_url, "node-7")
    expire_lease(db_url, "node-8")
    # a long run on a node that keeps renewing its lease is left alone
    assert busy_node.nodes.heartbeat() is False  # its lease had run out meanwhile...
    assert busy_node.nodes.heartbeat() is True  # ...and is renewed now
    recovered = me.recover_interrupted()
    assert [r.run_id for r in recovered] == [stale.run_id]
    assert recovered[0].status == "interrupted"
    assert (recovered[0].error or "").startswith("node node-7 missed its lease")
    assert me.get(busy.run_id).status == "running"  # type: ignore[union-attr]
    # a node stopped (SIGTERM) hands its runs over at once
    busy_node.nodes.stop()
    assert [r.run_id for r in me.recover_interrupted()] == [busy.run_id]
    # and its writes are refused from then on (fencing)
    assert busy_node.holds(busy.run_id, busy.attempt) is False
    assert busy_node.finish(busy.run_id, "succeeded", attempt=busy.attempt) is True  # not reclaimed
    taken = me.reclaim(stale.run_id, trigger="retry", attempt=stale.attempt)
    assert taken is not None and taken.attempt == 2
    assert stale_node.finish(stale.run_id, "succeeded", attempt=stale.attempt) is False


def test_a_node_back_from_an_outage_judges_no_lease_until_others_could_renew(
    make_ledger: MakeLedger, db_url: str
) -> None:
    """After a database outage every lease has run out at once: the first node back must
    not take over the runs of nodes that are alive but have not renewed yet."""
    from conftest import wait_until

    other = make_ledger(owner="other")
    me = make_ledger(owner="me", lease_seconds=2)
    assert other.claim("daily", T0) is not None
    me.nodes.ensure_registered()
    expire_lease(db_url, "other")
    expire_lease(db_url, "me")
    assert me.nodes.heartbeat() is False  # back first, its own lease had run out
    assert not me.nodes.judges_leases()
    assert me.recover_interrupted() == []  # 'other' may be alive and about to renew
    wait_until(me.nodes.judges_leases, 10, "half a lease after its own renewal")
    assert [r.job for r in me.recover_interrupted()] == ["daily"]  # it did not renew


def test_handed_over_lists_interrupted_runs_of_stopped_nodes(make_ledger: MakeLedger) -> None:
    leaving = make_ledger(owner="leaving")
    staying = make_ledger(owner="staying")
    mine = leaving.claim("daily", T0)
    theirs = staying.claim("daily", T0 + timedelta(days=1))
    manual = leaving.claim("daily", T0, trigger="manual")
    assert mine and theirs and manual
    assert {r.run_id for r in leaving.mark_interrupted_mine()} == {mine.run_id, manual.run_id}
    assert staying.handed_over(T0 - timedelta(days=1)) == []  # its node is still alive
    leaving.nodes.stop()
    handed = staying.handed_over(T0 - timedelta(days=1))
    assert [r.run_id for r in handed] == [mine.run_id]  # manual runs are not re-run
    assert staying.handed_over(T0 + timedelta(hours=1)) == []  # outside the window
    assert staying.reclaim(mine.run_id, trigger="retry", attempt=1) is not None


def test_two_recovering_daemons_take_each_run_once(make_ledger: MakeLedger, db_url: str) -> None:
    dead = make_ledger(owner="gone-host:1:1-a")
    for n in range(20):
        assert dead.claim("alert", T0 + timedelta(minutes=n)) is not None
    expire_lease(db_url, dead.owner)
    recoverers = [make_ledger(owner=f"r{i}:{i}:0-x") for i in range(3)]
    results = race(len(recoverers), lambda i: recoverers[i].recover_interrupted())
    taken = [r.slot for rs in results for r in rs]  # type: ignore[attr-defined]
    assert sorted(taken) == [T0 + timedelta(minutes=n) for n in range(20)]


def test_mark_interrupted_mine_on_shutdown(make_ledger: MakeLedger) -> None:
    me = make_ledger(owner="host-a:1:1-a")
    other = make_ledger(owner="host-b:2:2-b")
    claimed = me.claim("daily", T0)
    running = me.claim("daily", T0 + timedelta(days=1))
    done = finished_run(me, "daily", T0 + timedelta(days=2), "succeeded")
    theirs = other.claim("daily", T0 + timedelta(days=3))
    assert claimed and running and theirs
    assert me.mark_running(running.run_id)
    marked = me.mark_interrupted_mine()
    assert sorted(r.run_id for r in marked) == sorted([claimed.run_id, running.run_id])
    assert {r.status for r in marked} == {"interrupted"}
    assert me.get(done.run_id).status == "succeeded"  # type: ignore[union-attr]
    assert me.get(theirs.run_id).status == "claimed"  # type: ignore[union-attr]
    assert me.mark_interrupted_mine() == []
    # the run went on to finish before anyone reclaimed it: the real outcome wins
    assert me.finish(running.run_id, "succeeded")
    assert me.get(running.run_id).status == "succeeded"  # type: ignore[union-attr]
    # once another process reclaimed it, the late finish is refused
    assert other.reclaim(claimed.run_id, trigger="retry") is not None
    assert me.finish(claimed.run_id, "succeeded") is False


# ------------------------------------------------------------------- queries


def test_history_order_filter_limit(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    a0 = finished_run(ledger, "a", T0, "succeeded")
    a1 = finished_run(ledger, "a", T0 + timedelta(hours=1), "failed", error="boom")
    b0 = finished_run(ledger, "b", T0 + timedelta(minutes=30), "skipped")
    a2 = ledger.claim("a", T0 + timedelta(hours=2))
    a3 = interrupted_run(ledger, "a", T0 + timedelta(hours=3))
    # claimed later but for an earlier slot (catch-up): ordered by slot
    a_old = ledger.claim("a", T0 - timedelta(days=1), trigger="catch_up")
    assert a2 is not None and a_old is not None

    assert [r.run_id for r in ledger.history()] == [
        a3.run_id,
        a2.run_id,
        a1.run_id,
        b0.run_id,
        a0.run_id,
        a_old.run_id,
    ]
    assert [r.run_id for r in ledger.history("a", limit=2)] == [a3.run_id, a2.run_id]
    assert [r.run_id for r in ledger.history("b")] == [b0.run_id]
    assert [r.run_id for r in ledger.history(failed=True)] == [a3.run_id, a1.run_id]
    assert [r.run_id for r in ledger.history("b", failed=True)] == []
    assert ledger.history("nobody") == []
    assert len(ledger.history(limit=None)) == 6


def test_last_queries(ledger: Ledger) -> None:
    assert ledger.last_run("alert") is None
    assert ledger.last_slot("alert") is None
    assert ledger.last_finished("alert") is None
    sent = finished_run(ledger, "alert", T0, "succeeded", alert_key="k1")
    finished_run(ledger, "alert", T0 + timedelta(minutes=5), "suppressed", alert_key="k1")
    other = finished_run(ledger, "alert", T0 + timedelta(minutes=10), "succeeded", alert_key="k2")
    failed = finished_run(ledger, "alert", T0 + timedelta(minutes=15), "failed")
    running = ledger.claim("alert", T0 + timedelta(minutes=20), trigger="catch_up")
    manual = ledger.claim("alert", T0 + timedelta(minutes=25), trigger="manual")
    assert running is not None and manual is not None

    assert ledger.last_alert("alert", "k1").run_id == sent.run_id  # type: ignore[union-attr]
    assert ledger.last_alert("alert", "k2").run_id == other.run_id  # type: ignore[union-attr]
    assert ledger.last_alert("alert", "k3") is None
    assert ledger.last_finished("alert").run_id == failed.run_id  # type: ignore[union-attr]
    assert ledger.last_run("alert").run_id == manual.run_id  # type: ignore[union-attr]
    assert ledger.last_slot("alert") == T0 + timedelta(minutes=20)
    # a retried scheduled slot still counts as taken
    assert ledger.finish(running.run_id, "interrupted")
    assert ledger.reclaim(running.run_id, trigger="retry") is not None
    assert ledger.last_slot("alert") == T0 + timedelta(minutes=20)
    assert ledger.last_slot("other-job") is None


def test_purge_returns_paths_and_removes_mail(ledger: Ledger) -> None:
    from queued import deliver_everything, message

    old = ledger.claim("daily", T0)
    assert old is not None
    ledger.queue.enqueue(old.run_id, 1, ledger.owner, [message("a@x.org", chart=b"shared")])
    deliver_everything(ledger)
    assert ledger.finish(old.run_id, "succeeded", output_path="runs/daily/1.ipynb")
    no_file = finished_run(ledger, "daily", T0 + timedelta(days=1), "failed")
    old_active = ledger.claim("daily", T0 + timedelta(days=2))
    keep = ledger.claim("daily", T0 + timedelta(days=10))
    other_job = ledger.claim("weekly", T0)
    assert old_active and keep and other_job
    ledger.queue.enqueue(keep.run_id, 1, ledger.owner, [message("b@x.org", chart=b"shared")])
    deliver_everything(ledger)
    assert ledger.finish(keep.run_id, "succeeded", output_path="runs/daily/10.ipynb")
    assert ledger.finish(other_job.run_id, "succeeded", output_path="runs/weekly/1.ipynb")
    waiting = finished_run(ledger, "daily", T0 + timedelta(days=3), "skipped")
    ledger.queue.add(waiting.run_id, [message("c@x.org")])  # its recovery email still waits

    paths = ledger.purge("daily", T0 + timedelta(days=5))
    assert paths == ["runs/daily/1.ipynb"]
    assert ledger.get(old.run_id) is None
    assert ledger.get(no_file.run_id) is None
    assert ledger.queue.rows(run_ids=[old.run_id]) == []
    assert ledger.get(old_active.run_id) is not None  # active runs are never purged
    assert ledger.get(waiting.run_id) is not None  # nor runs with mail still waiting
    assert [r.recipient for r in ledger.queue.rows(run_ids=[keep.run_id])] == ["b@x.org"]
    # the part both runs shared is still there for the run that was kept
    sha = ledger.queue.message(ledger.queue.messages_of(keep.run_id)[0]).spec["images"][0]["sha256"]
    assert ledger.queue.load_parts([sha]) == {sha: b"shared"}
    assert ledger.get(other_job.run_id) is not None
    assert ledger.purge("daily", T0 + timedelta(days=5)) == []
    # the purged slot is free again
    assert ledger.claim("daily", T0) is not None


# -------------------------------------------------------------- db handling


def test_schema_version_and_reopen(db_url: str) -> None:
    with Ledger(db_url) as first:
        assert first.schema_version == SCHEMA_VERSION
        run = first.claim("daily", T0)
    assert run is not None
    with Ledger(db_url) as again:
        assert again.get(run.run_id) is not None
        assert again.claim("daily", T0) is None
    run_sql(db_url, "UPDATE notifier_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError, match="schema version 99") as info:
        Ledger(db_url)
    assert info.value.fix is not None and "upgrade notifier" in info.value.fix


def test_unusable_urls_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError) as bad:
        Ledger("this is not a url")
    assert "NOTIFIER_DB_URL" in str(bad.value)
    assert isinstance(bad.value, NotifierError)

    missing_dir = tmp_path / "no-such-dir" / "ledger.db"
    with pytest.raises(LedgerError) as nodir:
        Ledger(f"sqlite:///{missing_dir}")
    assert "unable to open database file" in nodir.value.message
    assert nodir.value.fix is not None and "directory" in nodir.value.fix

    # a server that is not there (or a driver that is not installed): the password
    # never appears in the message
    with pytest.raises(LedgerError) as down:
        Ledger("postgresql://notifier:hunter2@127.0.0.1:1/ledger?connect_timeout=2")
    assert "hunter2" not in str(down.value)
    assert "127.0.0.1:1" in str(down.value)
    assert down.value.fix


def test_default_owner_format(ledger: Ledger) -> None:
    host, pid, token = ledger.owner.rsplit(":", 2)
    assert host == socket.gethostname()
    assert pid == str(os.getpid())
    start, nonce = token.split("-")
    assert start.isdigit() and len(nonce) == 8


# ------------------------------------------------------- progress, files, pauses


def test_progress_run_files_and_pauses(make_ledger: MakeLedger) -> None:
    me, other = make_ledger(owner="me"), make_ledger(owner="other")
    run = me.claim("daily", T0)
    assert run is not None
    assert other.progress(run.run_id) is None
    me.set_progress(run.run_id, {"cell": 2, "cells": 7})
    assert other.progress(run.run_id) == {"cell": 2, "cells": 7}

    html = b"<html>" + b"chart " * 20_000 + b"</html>"
    me.save_run_file(run.run_id, "output.html", html)
    me.save_run_file(run.run_id, "worker.log", b"")
    me.save_run_file(run.run_id, "worker.log", b"second version")
    assert other.run_file(run.run_id, "output.html") == html  # readable from any node
    assert other.run_file(run.run_id, "worker.log") == b"second version"
    assert other.run_file(run.run_id, "missing") is None
    assert other.run_file_names(run.run_id) == ["output.html", "worker.log"]
    assert me.finish(run.run_id, "succeeded")
    me.purge("daily", T0 + timedelta(days=1))
    assert other.run_file_names(run.run_id) == []  # retention removes them with the run

    assert me.pause("daily", reason="migrating the database")
    assert not other.pause("daily")  # already paused
    (paused,) = other.paused().items()
    assert paused[0] == "daily" and paused[1]["reason"] == "migrating the database"
    assert paused[1]["paused_by"] == "me"
    assert other.resume("daily") and not me.resume("daily")
    assert me.paused() == {}


# ------------------------------------------------------------ PostgreSQL only


def test_postgresql_judges_leases_by_the_servers_clock(postgres_url: str) -> None:
    """Nodes need no synchronised clocks: a lease runs from the server's now()."""
    skew = timedelta(minutes=10)
    behind = Ledger(postgres_url, owner="slow-clock", clock=lambda: datetime.now(UTC) - skew)
    ahead = Ledger(postgres_url, owner="fast-clock", clock=lambda: datetime.now(UTC) + skew)
    me = Ledger(postgres_url, owner="judge")
    try:
        assert behind.claim("daily", T0) is not None
        assert ahead.claim("daily", T0 + timedelta(days=1)) is not None
        (server_now,) = run_sql(postgres_url, "SELECT now()")[0]
        leases = dict(run_sql(postgres_url, "SELECT node_id, lease_until FROM nodes"))
        for node in ("slow-clock", "fast-clock"):
            assert abs(leases[node] - (server_now + timedelta(seconds=60))) < timedelta(seconds=5)
        assert me.nodes.dead_owners({"slow-clock", "fast-clock"}) == {}
        assert me.recover_interrupted() == []
        expire_lease(postgres_url, "fast-clock")  # its own clock says nothing about it
        assert list(me.nodes.dead_owners({"slow-clock", "fast-clock"})) == ["fast-clock"]
    finally:
        for ledger in (behind, ahead, me):
            ledger.close()


def test_postgresql_connections_are_bounded_and_driver_errors_are_ledger_errors(
    postgres_url: str,
) -> None:
    """A dead server or network never hangs a node: TCP keepalives and a user timeout on
    the socket, a statement timeout in the session. Whatever the driver raises (but a
    unique key hit) reaches callers as a LedgerError with its fix."""
    ledger = Ledger(postgres_url)
    try:
        with ledger.db.tx(write=False) as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "1min"
            info = conn.connection.dbapi_connection.info  # type: ignore[union-attr]
            params = info.get_parameters()
        assert params.get("keepalives", "1") == "1"  # libpq leaves its default out
        assert (params["keepalives_idle"], params["keepalives_count"]) == ("30", "3")
        assert params["tcp_user_timeout"] == "60000"

        with pytest.raises(LedgerError) as slow:
            with ledger.db.tx(write=True) as conn:
                conn.exec_driver_sql("SET LOCAL statement_timeout = 200")
                conn.exec_driver_sql("SELECT pg_sleep(30)")
        assert "statement timeout" in slow.value.message and "60 s" in (slow.value.fix or "")

        with pytest.raises(LedgerError) as refused:  # a DataError, not an OperationalError
            with ledger.db.tx(write=False) as conn:
                conn.exec_driver_sql("SELECT 1 / 0")
        assert "division by zero" in refused.value.message and refused.value.fix

        assert ledger.claim("daily", T0) is not None
        assert ledger.claim("daily", T0) is None  # IntegrityError is still an answer
    finally:
        ledger.close()


def test_read_only_commands_on_an_empty_postgresql_database(postgres_url: str) -> None:
    from notifier.ledger import NoLedgerYet

    with pytest.raises(NoLedgerYet) as info:
        Ledger(postgres_url, create=False)
    assert "no ledger yet" in str(info.value) and info.value.fix
    assert run_sql(postgres_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [
        (0,)
    ]


def test_run_files_are_fenced_by_the_attempt(make_ledger: MakeLedger, db_url: str) -> None:
    stalled, rescuer = make_ledger(owner="stalled"), make_ledger(owner="rescuer")
    run = stalled.claim("daily", T0)
    assert run is not None and stalled.mark_running(run.run_id, run.attempt)
    assert stalled.save_run_file(run.run_id, "worker.log", b"attempt 1", attempt=1)
    expire_lease(db_url, "stalled")  # paused past its lease: taken over
    (interrupted,) = rescuer.recover_interrupted()
    taken = rescuer.reclaim(run.run_id, trigger="retry", attempt=interrupted.attempt)
    assert taken is not None and taken.attempt == 2
    assert rescuer.save_run_file(run.run_id, "worker.log", b"attempt 2", attempt=2)
    # the stalled node wakes up: its late writes are refused
    assert not stalled.save_run_file(run.run_id, "worker.log", b"late", attempt=1)
    assert not stalled.save_run_file(run.run_id, "output.html", b"late", attempt=1)
    assert stalled.run_file(run.run_id, "worker.log") == b"attempt 2"
    assert stalled.run_file_names(run.run_id) == ["worker.log"]


def test_a_postgresql_user_who_may_not_create_tables_gets_one_clear_error(
    postgres_url: str,
) -> None:
    from sqlalchemy.engine import make_url

    role = f"weak_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    run_sql(postgres_url, f"CREATE ROLE {role} LOGIN PASSWORD 'Weak-s3cret-pw'")
    run_sql(postgres_url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    weak = make_url(postgres_url).set(username=role, password="Weak-s3cret-pw")
    try:
        with pytest.raises(LedgerError) as caught:
            Ledger(weak.render_as_string(hide_password=False))
        text = f"{caught.value} {caught.value.fix}"
        assert "permission denied" in text and "may write" in text
        assert "Weak-s3cret-pw" not in text
    finally:
        run_sql(postgres_url, f"DROP ROLE {role}")
