"""Nodes: every process that owns runs or sends queued mail, kept alive by a lease.

A node registers a row with ``lease_until`` and renews it by heartbeats (every quarter
of the lease). Another node judges it dead when

* it stopped (a graceful shutdown sets ``stopped_at``: its runs are handed over at once),
* its lease ran out by the database's clock (PostgreSQL's ``now()``; SQLite lives on one
  host), whatever its pid or hostname, or
* it runs under the same kernel and pid namespace (same ``host_key``: boot id + pid
  namespace) and its pid is gone or belongs to a process started at another time. This
  shortcut only *speeds up* the verdict after a crash on one machine: a pid is never
  trusted across hosts or containers, and a live pid with an expired lease is dead.

A node that was paused past its lease (SIGSTOP, a frozen VM) and resumes finds its runs
taken over: every write a run makes is fenced by the run's owner and attempt.

A node that was itself cut off (a database outage, a pause) does not judge others by
their leases until it has renewed its own for half a lease: after an outage every lease
has run out at once, and the first node back must not take over the runs of nodes that
are alive but have not renewed yet.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import psutil
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Row

from notifier.ledger.database import Database, LedgerError
from notifier.ledger.schema import nodes_table
from notifier.settings import DEFAULT_LEASE_SECONDS

log = logging.getLogger("notifier.ledger")

# Process start times are read as wall-clock values whose boot-time base can move by about
# a second between reads; a pid reused by a process that started more than this later than
# the one recorded is recognised as a different process.
_START_TOLERANCE_MS = 2000
# Stopped nodes are forgotten after this long (their runs were handed over long ago).
_FORGET_AFTER = timedelta(days=7)


@lru_cache(maxsize=1)
def host_key() -> str:
    """Boot id + pid namespace: processes with the same key can judge each other's pid."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
        return f"{boot}:{namespace}"
    except OSError:
        if sys.platform.startswith("linux"):
            return f"unknown:{secrets.token_hex(8)}"  # no /proc: never trust a pid
        return f"{socket.gethostname()}:no-pid-namespaces"


def process_start_ms(pid: int | None = None) -> int:
    """When the process started, in epoch milliseconds (tells a reused pid apart)."""
    return int(psutil.Process(pid).create_time() * 1000)


def new_node_id() -> str:
    """``hostname:pid:start-nonce`` for this process: readable in logs, unique forever."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start_ms()}-{secrets.token_hex(4)}"


def pid_is_gone(pid: int, start_ms: int) -> bool:
    """True when ``pid`` is not running, is a zombie, or is a later process with that pid."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        started = int(process.create_time() * 1000)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False  # exists but not inspectable: assume alive
    return abs(started - start_ms) > _START_TOLERANCE_MS


@dataclass(frozen=True, slots=True)
class Node:
    """A registered node, as stored."""

    node_id: str
    host: str
    host_key: str
    pid: int
    role: str
    started_at: datetime
    heartbeat_at: datetime
    lease_until: datetime
    stopped_at: datetime | None
    jobs_hash: str | None
    version: str | None


def _node(row: Row) -> Node:
    return Node(
        node_id=row.node_id,
        host=row.host,
        host_key=row.host_key,
        pid=row.pid,
        role=row.role,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        lease_until=row.lease_until,
        stopped_at=row.stopped_at,
        jobs_hash=row.jobs_hash,
        version=row.version,
    )


class NodeRegistry:
    """This process's node row (registered on first use) and verdicts on other nodes."""

    def __init__(
        self, db: Database, node_id: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.db = db
        self.node_id = node_id
        self.lease = timedelta(seconds=lease_seconds)
        self.role = "cli"
        self.jobs_hash: str | None = None
        self._registered = False
        self._lock = threading.Lock()
        self._beating: threading.Event | None = None
        # monotonic times: the last renewal of this node's lease, and until when this node
        # withholds lease verdicts on others (it was cut off itself)
        self._renewed_at = 0.0
        self._quiet_until = 0.0
        self._beat_failing = False

    # ------------------------------------------------------------- this node

    def ensure_registered(self) -> None:
        """Register this node (once) and start renewing its lease in the background."""
        with self._lock:
            if self._registered:
                return
            self._write_registration()
            self._registered = True
            self._beating = threading.Event()
            beat = threading.Thread(
                target=self._beat, args=(self._beating,), name="node-heartbeat", daemon=True
            )
            beat.start()

    def configure(self, *, role: str | None = None, jobs_hash: str | None = None) -> None:
        """Set the role and jobs-file hash shown by ``notifier nodes`` (written on register)."""
        if role is not None:
            self.role = role
        if jobs_hash is not None:
            self.jobs_hash = jobs_hash
        if self._registered:
            with self.db.tx(write=True) as conn:
                conn.execute(
                    update(nodes_table)
                    .where(nodes_table.c.node_id == self.node_id)
                    .values(role=self.role, jobs_hash=self.jobs_hash)
                )

    def _write_registration(self) -> None:
        from notifier import __version__

        with self.db.tx(write=True) as conn:
            now = self.db.db_now(conn)
            values = {
                "host": socket.gethostname()[:255],
                "host_key": host_key(),
                "pid": os.getpid(),
                "process_start_ms": process_start_ms(),
                "role": self.role,
                "started_at": now,
                "heartbeat_at": now,
                "lease_until": now + self.lease,
                "stopped_at": None,
                "jobs_hash": self.jobs_hash,
                "version": __version__,
            }
            done = conn.execute(
                update(nodes_table).where(nodes_table.c.node_id == self.node_id).values(**values)
            )
            if done.rowcount == 0:
                conn.execute(insert(nodes_table).values(node_id=self.node_id, **values))
            conn.execute(  # nodes that stopped, or crashed, long ago
                delete(nodes_table).where(
                    nodes_table.c.lease_until < now - _FORGET_AFTER,
                    nodes_table.c.node_id != self.node_id,
                )
            )
        self._renewed_at = time.monotonic()

    def heartbeat(self) -> bool:
        """Renew the lease; False when it had already run out (others may have taken over)."""
        with self.db.tx(write=True) as conn:
            now = self.db.db_now(conn)
            row = conn.execute(
                select(nodes_table.c.lease_until, nodes_table.c.stopped_at).where(
                    nodes_table.c.node_id == self.node_id
                )
            ).first()
            conn.execute(
                update(nodes_table)
                .where(nodes_table.c.node_id == self.node_id)
                .values(heartbeat_at=now, lease_until=now + self.lease, stopped_at=None)
            )
        kept = row is not None and row.stopped_at is None and row.lease_until >= now
        self._renewed(lapsed=not kept)
        return kept

    def _renewed(self, *, lapsed: bool) -> None:
        """Note a renewal; after a lapse (or failed beats), withhold verdicts for a while."""
        moment = time.monotonic()
        if lapsed or self._beat_failing or moment - self._renewed_at > self.lease_seconds / 2:
            self._quiet_until = moment + self.lease_seconds / 2
        self._renewed_at = moment

    @property
    def lease_seconds(self) -> float:
        """The lease length of this node, in seconds."""
        return self.lease.total_seconds()

    def judges_leases(self) -> bool:
        """False while this node was cut off itself (see the module docstring)."""
        moment = time.monotonic()
        if self._registered and moment - self._renewed_at > self.lease_seconds / 2:
            return False  # its own heartbeat is late: paused, overloaded or cut off
        return moment >= self._quiet_until

    def _beat(self, done: threading.Event) -> None:
        interval = self.lease_seconds / 4
        while not done.wait(interval):
            try:
                if not self.heartbeat():
                    log.warning(
                        "this node's lease ran out before it could renew it (paused, cut off "
                        "or overloaded?): other nodes may have taken over its runs"
                    )
                if self._beat_failing:
                    self._beat_failing = False
                    log.warning("node heartbeat: the ledger is reachable again")
            except LedgerError as error:  # a missed beat must not end the beating
                if not self._beat_failing:  # one line per outage, not one per beat
                    self._beat_failing = True
                    log.warning("node heartbeat failed, retrying every %.0f s: %s", interval, error)
            except Exception:  # pragma: no cover - never let the heartbeat thread die
                log.exception("node heartbeat failed")

    def stop(self) -> None:
        """Mark this node stopped: other nodes take over what it still owns, at once."""
        with self._lock:
            if self._beating is not None:
                self._beating.set()
            if not self._registered:
                return
            self._registered = False
        with self.db.tx(write=True) as conn:
            now = self.db.db_now(conn)
            conn.execute(
                update(nodes_table)
                .where(nodes_table.c.node_id == self.node_id)
                .values(stopped_at=now, lease_until=now)
            )

    # ------------------------------------------------------------ other nodes

    def dead_owners(self, owners: set[str], now: datetime | None = None) -> dict[str, str]:
        """Of ``owners`` (node ids), those judged dead, each with the reason."""
        owners = {owner for owner in owners if owner and owner != self.node_id}
        if not owners:
            return {}
        with self.db.tx(write=False) as conn:
            now = now or self.db.db_now(conn)
            rows = {
                row.node_id: row
                for row in conn.execute(
                    select(nodes_table).where(nodes_table.c.node_id.in_(sorted(owners)))
                )
            }
        dead: dict[str, str] = {}
        mine = host_key()
        leases = self.judges_leases()
        for owner in owners:
            row = rows.get(owner)
            if row is None:
                dead[owner] = f"node {owner} is not registered (a notifier before 0.2?)"
            elif row.stopped_at is not None:
                dead[owner] = f"node {owner} stopped at {row.stopped_at.isoformat()}"
            elif row.lease_until < now and leases:
                dead[owner] = (
                    f"node {owner} missed its lease (last heartbeat {row.heartbeat_at.isoformat()})"
                )
            elif row.host_key == mine and pid_is_gone(row.pid, row.process_start_ms):
                dead[owner] = f"node {owner}: process {row.pid} is gone"
        return dead

    def all(self) -> list[Node]:
        """Every known node, newest first."""
        with self.db.tx(write=False) as conn:
            rows = conn.execute(select(nodes_table).order_by(nodes_table.c.started_at.desc()))
            return [_node(row) for row in rows]

    def is_live(self, node: Node, now: datetime) -> bool:
        """The same verdict as :meth:`dead_owners`, for one node row already read."""
        return node.stopped_at is None and node.lease_until >= now
