"""One slot of one job, exactly once: claim it in the ledger, run, deliver, record.

Used by the scheduler for every fire time and by ``notifier run JOB``. The ledger
claim happens before the notebook runs, so a slot never runs twice; a re-attempt
of an interrupted slot skips the recipients whose server already accepted it.
"""

from __future__ import annotations

import hashlib
import html
import logging
import shutil
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from notifier.config import Settings
from notifier.errors import MessageError, NotifierError
from notifier.jobs import Job
from notifier.ledger import Ledger, Run
from notifier.message import Email, compose
from notifier.runner import (
    Execution,
    PlannedEmail,
    RunRequest,
    deliver,
    execute,
    failure_email,
    job_runs_folder,
    plan,
)
from notifier.transport import Outgoing, SendResult, Transport, transport_for

log = logging.getLogger("notifier.jobs")

HEARTBEAT_SECONDS = 30.0


def alert_key(planned: list[PlannedEmail]) -> str:
    """Identity of an alert for the cooldown: the subjects and recipients it sends."""
    parts = sorted(
        f"{p.outgoing.subject}|{','.join(sorted(p.outgoing.recipients))}" for p in planned
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _notes(run: Run, text: str) -> str:
    """This attempt's notes, after what ended the earlier attempt of a re-attempted slot."""
    return f"{run.notes}; then {text}" if run.attempt > 1 and run.notes else text


def request_for(job: Job, run: Run) -> RunRequest:
    """The runner request of a job's slot."""
    return RunRequest(
        notebook=job.notebook,
        parameters=dict(job.parameters),
        job_name=job.name,
        to=list(job.to),
        cc=list(job.cc),
        bcc=list(job.bcc),
        on_failure=list(job.on_failure) or None,
        timeout=job.timeout_seconds,
        cell_timeout=job.cell_timeout_seconds,
        scheduled_for=run.slot,
        run_id=run.run_id,
    )


class SlotRunner:
    """Runs claimed slots; shared by the scheduler's worker threads."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        transport_factory: Callable[[], Transport] | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.transport_factory = transport_factory or (lambda: transport_for(settings))
        self.stopping = stopping or threading.Event()

    def run_slot(self, job: Job, slot: datetime, *, trigger: str = "schedule") -> str | None:
        """Claim and run ``(job, slot)``; None when another run already has the slot."""
        run = self.ledger.claim(job.name, slot, trigger=trigger, recipients=job.to)
        if run is None:
            log.info("%s: slot %s is already taken; not running it twice", job.name, slot)
            return None
        return self.execute_claimed(job, run)

    def resume(self, job: Job, run: Run, *, trigger: str = "retry") -> str | None:
        """Take over an interrupted run of the same slot (None when another process did)."""
        taken = self.ledger.reclaim(run.run_id, trigger=trigger, attempt=run.attempt)
        if taken is None:
            return None
        log.info(
            "%s: re-running interrupted slot %s (attempt %d)", job.name, run.slot, taken.attempt
        )
        return self.execute_claimed(job, taken)

    def execute_claimed(self, job: Job, run: Run) -> str:
        """Run a slot this process holds; returns the final status."""
        self.ledger.mark_running(run.run_id)
        beating = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(run.run_id, beating), daemon=True)
        beat.start()
        try:
            return self._execute(job, run)
        except Exception as error:  # the ledger must never keep a 'running' row for a dead run
            log.exception("%s: run %s crashed", job.name, run.run_id)
            self.ledger.finish(run.run_id, "failed", error=f"internal error: {error}"[:500])
            try:
                self._notify_failure_before_start(job, run, f"internal error: {error}", None)
            except Exception:
                log.exception("%s: the failure email could not be sent either", job.name)
            return "failed"
        except BaseException:  # Ctrl-C during `notifier run JOB`: visible, not 'running' forever
            self.ledger.finish(run.run_id, "interrupted", error="interrupted by the user")
            raise
        finally:
            beating.set()

    def _heartbeat(self, run_id: str, done: threading.Event) -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            try:
                self.ledger.heartbeat(run_id)
            except Exception as error:  # a missed beat must not end the beating
                log.warning("heartbeat of run %s failed: %s", run_id, error)

    def _execute(self, job: Job, run: Run) -> str:
        request = request_for(job, run)
        try:
            execution = self._execute_with_retries(job, request)
        except NotifierError as error:  # missing notebook, undeclared parameter, runs dir
            self.ledger.finish(run.run_id, "failed", error=error.message)
            self._notify_failure_before_start(job, run, error.message, error.fix)
            return "failed"
        output = str(execution.output_notebook)
        if not self.ledger.heartbeat(run.run_id):
            # Another daemon judged this one dead (a long stall) and took the slot over:
            # it delivers; sending here too would mail everyone twice.
            log.warning(
                "%s: run %s was taken over by another process; not delivering", job.name, run.run_id
            )
            return "taken over"
        if self.stopping.is_set() and execution.status == "failed":
            self.ledger.finish(
                run.run_id, "interrupted", error="stopped by shutdown", output_path=output
            )
            return "interrupted"
        if execution.status == "skipped":
            note = "" if run.manual else self._maybe_recover(job, run, execution)
            self.ledger.finish(
                run.run_id,
                "skipped",
                output_path=output,
                notes=_notes(run, f"{execution.skip_reason}{note}"),
            )
            status = "skipped"
        elif execution.status == "succeeded":
            status = self._deliver(job, run, execution)
        else:
            self.ledger.finish(run.run_id, "failed", error=execution.error, output_path=output)
            self._send_failure(run, execution)
            status = "failed"
        self._apply_retention(job)
        return status

    def _execute_with_retries(self, job: Job, request: RunRequest) -> Execution:
        attempts = job.retries.count + 1
        for attempt in range(1, attempts + 1):
            execution = execute(request, self.settings)
            if execution.status != "failed" or attempt == attempts or self.stopping.is_set():
                return execution
            log.warning(
                "%s: attempt %d of %d failed (%s); retrying in %.0fs",
                job.name,
                attempt,
                attempts,
                execution.error,
                job.retries.delay_seconds,
            )
            if self.stopping.wait(job.retries.delay_seconds):
                return execution
        raise AssertionError("unreachable")

    def _deliver(self, job: Job, run: Run, execution: Execution) -> str:
        output = str(execution.output_notebook)
        try:
            planned = plan(execution, self.settings)
        except MessageError as error:
            execution.error = str(error)
            execution.failure = {"kind": "compose", "ename": "MessageError", "evalue": str(error)}
            self.ledger.finish(run.run_id, "failed", error=error.message, output_path=output)
            self._send_failure(run, execution)
            return "failed"
        if not planned:
            self.ledger.finish(
                run.run_id, "succeeded", output_path=output, notes=_notes(run, "no emails declared")
            )
            return "succeeded"
        key = alert_key(planned)
        subjects = "; ".join(p.outgoing.subject for p in planned)
        if job.cooldown_seconds and not run.manual:  # a manual run always sends
            last = self.ledger.last_alert(job.name, key)
            cooling = last is not None and run.slot - last.slot < timedelta(
                seconds=job.cooldown_seconds
            )
            if cooling and not self._told_recovered(job, run):
                until = last.slot + timedelta(seconds=job.cooldown_seconds)
                note = f"same alert sent for slot {last.slot.isoformat()}; cooldown until {until.isoformat()}"
                log.info("%s: %s", job.name, note)
                self.ledger.finish(
                    run.run_id,
                    "suppressed",
                    output_path=output,
                    alert_key=key,
                    notes=_notes(run, note),
                )
                return "suppressed"
        problems: list[str] = []
        # One connection for the batch; each email is recorded as soon as the server has
        # answered it, so a crash between two emails never re-sends the first one.
        deliver(
            planned,
            self.transport_factory(),
            already_accepted=lambda email_key: self.ledger.accepted_recipients(
                job.name, run.slot, email_key, manual=run.manual
            ),
            on_result=lambda item, result: problems.append(self._record(run, [(item, result)])),
        )
        failed = "; ".join(p for p in problems if p)[:500]
        status = "failed" if failed else "succeeded"
        self.ledger.finish(
            run.run_id,
            status,
            output_path=output,
            alert_key=key,
            error=f"delivery failed: {failed}" if failed else None,
            notes=_notes(run, f"sent: {subjects}"[:500]),
        )
        return status

    def _record(self, run: Run, pairs: list[tuple[PlannedEmail, SendResult]]) -> str:
        """Store per-recipient results; return a summary of failures ('' when none)."""
        problems = []
        for item, result in pairs:
            for rcpt in result.recipients:
                status = (
                    ("outbox" if result.transport == "outbox" else "accepted")
                    if rcpt.accepted
                    else "refused"
                )
                self.ledger.record_delivery(
                    run.run_id,
                    item.key,
                    result.message_id,
                    rcpt.address,
                    status,
                    rcpt.code,
                    rcpt.reply,
                )
                if not rcpt.accepted:
                    problems.append(f"{rcpt.address}: {rcpt.code} {rcpt.reply}".strip())
            if result.error:
                answered = {r.address for r in result.recipients}
                for address in item.outgoing.recipients:
                    if address not in answered:
                        self.ledger.record_delivery(
                            run.run_id,
                            item.key,
                            result.message_id,
                            address,
                            "failed",
                            None,
                            result.error[:500],
                        )
                problems.append(result.error.splitlines()[0])
        return "; ".join(problems)[:500]

    def _notify(self, run: Run, key: str, outgoing: Outgoing | None, what: str) -> bool:
        """Send a notice (failure, recovery) and record its deliveries on the run."""
        if outgoing is None:
            log.warning("%s: no recipients for the %s email", run.job, what)
            return False
        results = self.transport_factory().send([outgoing])
        for result in results:
            self._record(run, [(PlannedEmail(key, outgoing), result)])
            if not result.ok:
                log.error("%s: %s email not delivered: %s", run.job, what, result.error)
        return all(result.ok for result in results)

    def _notify_failure_before_start(
        self, job: Job, run: Run, message: str, fix: str | None
    ) -> None:
        """A job that cannot even start (notebook gone, parameter renamed) still tells someone."""
        recipients = list(job.on_failure) or [*job.to, *job.cc]
        body = (
            f"<h2 style='color:#b00020'>Run failed before it started: {html.escape(job.name)}</h2>"
            f"<p>{html.escape(message)}</p>"
            + (f"<p><b>Fix:</b> {html.escape(fix)}</p>" if fix else "")
            + f"<p>Notebook: {html.escape(str(job.notebook))}<br>Slot: {run.slot.isoformat()}</p>"
        )
        mail = Email(
            subject=f"[notifier] FAILED: {job.name}: {message.splitlines()[0]}"[:200],
            to=recipients,
            html=body,
        )
        outgoing = compose(mail, default_sender=self.settings.from_address) if recipients else None
        self._notify(run, "failure", outgoing, "failure")

    def _send_failure(self, run: Run, execution: Execution) -> None:
        self._notify(run, "failure", failure_email(execution, self.settings), "failure")

    def _previous_outcome(self, job: Job, run: Run) -> Run | None:
        """The newest other run of the job that alerted, was suppressed or was quiet."""
        return next(
            (
                r
                for r in self.ledger.history(job.name, limit=50)
                if r.run_id != run.run_id
                and not r.manual
                and r.status in {"succeeded", "suppressed", "skipped"}
            ),
            None,
        )

    def _told_recovered(self, job: Job, run: Run) -> bool:
        """True when the run before this alert was quiet and the job mails recoveries.

        The recipients were then told it recovered: a new alert is news, whatever the
        cooldown of the previous one.
        """
        if not job.notify_recovery:
            return False
        previous = self._previous_outcome(job, run)
        return previous is not None and previous.status == "skipped"

    def _maybe_recover(self, job: Job, run: Run, execution: Execution) -> str:
        """After an alert, the first quiet run mails 'recovered'. Returns a note for the ledger."""
        if not job.notify_recovery:
            return ""
        previous = self._previous_outcome(job, run)
        if previous is None or previous.status == "skipped" or not previous.alert_key:
            return ""
        recipients = self._alert_recipients(job, previous)
        if not recipients:
            return ""
        body = (
            f"<p><b>{html.escape(job.name)}</b> is back to normal: "
            f"{html.escape(execution.skip_reason or '')}.</p>"
            f"<p>The alert started with slot {previous.slot.astimezone(job.tz):%Y-%m-%d %H:%M %Z}.</p>"
        )
        visible = [r for r in recipients if r in {*job.to, *job.cc}]
        hidden = [r for r in recipients if r not in visible]  # e.g. bcc: stays blind
        outgoing = compose(
            Email(subject=f"RECOVERED: {job.name}", to=visible, bcc=hidden, html=body),
            default_sender=self.settings.from_address,
        )
        ok = self._notify(run, "recovery", outgoing, "recovery")
        log.info("%s: recovered; recovery email %s", job.name, "sent" if ok else "FAILED")
        return " (recovery email sent)" if ok else " (recovery email failed)"

    def _alert_recipients(self, job: Job, alert: Run) -> list[str]:
        """Who got the alert (its recorded deliveries), else the job's recipients."""
        sent = alert
        if alert.status == "suppressed" and alert.alert_key:
            sent = self.ledger.last_alert(job.name, alert.alert_key) or alert
        delivered = [
            d.recipient
            for d in self.ledger.deliveries(sent.run_id)
            if d.status in {"accepted", "outbox"} and d.email_key not in {"failure", "recovery"}
        ]
        return list(dict.fromkeys(delivered)) or [*job.to, *job.cc]

    def _apply_retention(self, job: Job) -> None:
        """Remove ledger rows and run folders (every attempt) older than keep_runs."""
        if not job.keep_runs_seconds:
            return
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=job.keep_runs_seconds)
        self.ledger.purge(job.name, cutoff)
        job_folder = job_runs_folder(self.settings.runs_dir, job.name).resolve()
        for folder in job_folder.glob("*T*Z-*") if job_folder.is_dir() else ():
            try:  # folder names start with the slot: 20261122T080000Z-<run id>[-N]
                stamp = datetime.strptime(folder.name[:16], "%Y%m%dT%H%M%SZ")
            except ValueError:
                continue
            if stamp.replace(tzinfo=timezone.utc) < cutoff and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
