"""The ``notifier schedule`` daemon: APScheduler firing ledger-claimed slots of jobs.yaml.

``daemon`` (start, reload, recovery and takeover, shutdown), ``executor`` (the thread
pool that passes each run its slot), ``misfire`` (slots missed while the daemon was down).
"""

from notifier.daemon.daemon import Daemon
from notifier.daemon.misfire import missed_slots

__all__ = ["Daemon", "missed_slots"]
