"""The states a run and a queued recipient can be in: one definition, used everywhere.

A *run* is one slot of one job (or one ad-hoc notebook run). A *recipient row* is one
(email, recipient) pair of a run in the outbound queue. Both are ``str`` enums so they
compare equal to the strings stored in the database and printed by the CLI.
"""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    """Where a run is; the first three are *active*, the rest final (but see ``interrupted``).

    ``delivering``: the notebook ran and its emails are in the outbound queue, some not yet
    final (deferred by a mail outage, say). The run ends ``succeeded`` when every report
    email was delivered, ``failed`` when one was refused, expired, dropped or has an
    unknown outcome. ``interrupted`` (a crash or a shutdown) may be re-run per the job's
    misfire policy.
    """

    CLAIMED = "claimed"
    RUNNING = "running"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    SUPPRESSED = "suppressed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


class RecipientStatus(str, Enum):
    """What happened to one email for one recipient.

    ``queued`` (planned, not tried), ``sending`` (marked just before the SMTP transaction:
    found after a crash it means *outcome unknown*), ``deferred`` (a temporary failure;
    tried again at ``next_attempt_at``), then one of the final states: ``delivered``
    (accepted by the server or written to the outbox), ``refused`` (a permanent 5xx, or a
    message the server can never take), ``expired`` (still failing when its lifetime ran
    out), ``unknown`` (the link dropped after the message was sent: possibly delivered,
    never sent again unless the job says ``on_unknown: resend``), ``dropped`` (by
    ``notifier queue drop``).
    """

    QUEUED = "queued"
    SENDING = "sending"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    REFUSED = "refused"
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    DROPPED = "dropped"

    def __str__(self) -> str:
        return self.value


ACTIVE_RUN = (RunStatus.CLAIMED, RunStatus.RUNNING)
# A run in these states has ended its notebook part; 'delivering' still has mail queued.
EXECUTED_RUN = (
    RunStatus.DELIVERING,
    RunStatus.SUCCEEDED,
    RunStatus.SKIPPED,
    RunStatus.SUPPRESSED,
    RunStatus.FAILED,
)
FINAL_RUN = (RunStatus.SUCCEEDED, RunStatus.SKIPPED, RunStatus.SUPPRESSED, RunStatus.FAILED)
RECLAIMABLE_RUN = (RunStatus.INTERRUPTED, RunStatus.FAILED)

WAITING = (RecipientStatus.QUEUED, RecipientStatus.DEFERRED)
PENDING = (RecipientStatus.QUEUED, RecipientStatus.SENDING, RecipientStatus.DEFERRED)
FINAL_RECIPIENT = (
    RecipientStatus.DELIVERED,
    RecipientStatus.REFUSED,
    RecipientStatus.EXPIRED,
    RecipientStatus.UNKNOWN,
    RecipientStatus.DROPPED,
)
# What a re-attempt (or `notifier queue retry`) may bring back to 'queued'.
RETRYABLE = (
    RecipientStatus.DEFERRED,
    RecipientStatus.EXPIRED,
    RecipientStatus.UNKNOWN,
    RecipientStatus.REFUSED,
    RecipientStatus.DROPPED,
)

TRIGGERS = ("schedule", "manual", "catch_up", "retry")
