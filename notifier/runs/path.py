"""The one run path: claim -> execute -> plan -> queue -> deliver -> record.

Scheduled slots, ``notifier run JOB``, ``notifier run NOTEBOOK`` and the dashboard's
"Run now" all go through :class:`RunPath`:

1. **claim** the slot in the ledger (scheduled lane, or the manual lane for runs on
   request), so a slot never runs twice; an ad-hoc notebook run is a manual run of a job
   named after the notebook;
2. **execute** the notebook in a worker process (:mod:`notifier.notebook.execute`), with the job's
   ``retries`` for a failing notebook; a scheduled slot takes the worker the daemon
   prepared for it (a warm start, ``prepared=``), when there is one;
3. **plan** every email it declared (an invalid one fails the run with the real cause)
   and apply the alert rules (cooldown, recovery);
4. **queue** them, one row per (email, recipient), keyed by content, in one transaction
   that moves the run to ``delivering``, fenced by the run's owner and attempt;
5. **deliver** what is due right away (:class:`~notifier.delivery.worker.Deliverer`);
   what a mail outage defers is retried by the daemon's delivery service with backoff,
   and the run ends ``succeeded`` or ``failed`` when its mail is settled.

A run that fails (notebook error, timeout, an email that cannot be built, a notebook that
cannot even start) queues one failure email for the job's failure recipients, through
the same queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from notifier.delivery.notices import (
    not_started_email,
    one_line,
    recovery_email,
    run_failed_email,
)
from notifier.delivery.planning import check_keys, plan_email
from notifier.delivery.worker import (
    Deliverer,
    Outcome,
    OutcomeCallback,
    TransportFactory,
    default_transports,
)
from notifier.errors import MessageError, NotifierError
from notifier.jobs import Job
from notifier.ledger import Fenced, Ledger, LedgerError, Run
from notifier.ledger.queries import redacted
from notifier.ledger.queue import NewMessage
from notifier.ledger.retry import Patience
from notifier.mail.model import Email
from notifier.notebook.execute import Execution, RunRequest, execute, refuse_secret_parameters
from notifier.notebook.prepared import PreparedWorker
from notifier.runs import alerts
from notifier.runs import files as run_files
from notifier.runs.retention import apply_retention
from notifier.settings import Settings

log = logging.getLogger("notifier.runs")
T = TypeVar("T")

UNDISCLOSED = "undisclosed-recipients:;"
OUTBOX_ONLY_RECIPIENT = "undisclosed-recipients@notifier.invalid"


@dataclass
class RunResult:
    """What one run did: its ledger row at the end, the execution, and the mail outcomes."""

    run: Run
    execution: Execution | None
    outcomes: list[Outcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fenced: bool = False  # another node took the run over: this one delivered nothing

    @property
    def status(self) -> str:
        """The run's status in the ledger."""
        return self.run.status


def request_for(job: Job, run: Run) -> RunRequest:
    """The execution request of a job's run."""
    return RunRequest(
        notebook=job.notebook,
        parameters=dict(job.parameters),
        job_name=job.name,
        to=list(job.to),
        cc=list(job.cc),
        bcc=list(job.bcc),
        timeout=job.timeout_seconds,
        cell_timeout=job.cell_timeout_seconds,
        scheduled_for=run.slot,
        run_id=run.run_id,
        kernel_name=job.kernel,
        hide_code=job.hide_code,
    )


def _notes(run: Run, text: str) -> str:
    """This attempt's notes, after what ended the earlier attempt of a re-attempted slot."""
    return f"{run.notes}; then {text}" if run.attempt > 1 and run.notes else text


class RunPath:
    """Runs jobs (scheduled or on request) and ad-hoc notebooks, one path for all."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        transports: TransportFactory | None = None,
        stopping: threading.Event | None = None,
        abort: threading.Event | None = None,
        executor: Callable[..., Execution] = execute,  # (request, settings, *, progress)
        on_outcome: OutcomeCallback | None = None,
        prepared: Callable[[Job, datetime], PreparedWorker | None] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        # stopping: no new attempts (a shutdown began); abort: stop sending now (its grace
        # period is over). Mail not sent by then stays queued for the next daemon.
        self.stopping = stopping or threading.Event()
        self.abort = abort or threading.Event()
        self.deliverer = Deliverer(
            ledger, settings, transports or default_transports(settings), stopping=self.abort
        )
        self._execute = executor
        # told of each recipient's answer as the run's mail goes out (a progress bar)
        self.on_outcome = on_outcome
        # the notebook's outcome is in memory: a briefly locked ledger must not lose it
        self._patience = Patience(log, stopping=self.abort, grace=settings.shutdown_grace)
        # the runs this process is executing; a claim and its entry here happen under one
        # lock, so release_orphans() never mistakes a fresh claim for an orphan
        self.active: set[str] = set()
        self._claims = threading.Lock()
        # the warm pool's take(job, slot): the worker prepared for a scheduled slot
        self._prepared = prepared

    # ------------------------------------------------------------------ claims

    def paused(self, job: Job, slot: datetime) -> bool:
        """True (and one log line) when ``notifier pause`` holds the job: its slot is not run."""
        held = self.ledger.paused().get(job.name)
        if held is None:
            return False
        reason = f" ({held['reason']})" if held["reason"] else ""
        log.info(
            "%s: slot %s not run: paused by %s since %s%s",
            job.name,
            slot,
            held["paused_by"],
            held["paused_at"],
            reason,
        )
        return True

    def run_slot(self, job: Job, slot: datetime, *, trigger: str = "schedule") -> RunResult | None:
        """Claim and run ``(job, slot)``; None when another run already has the slot, or
        the job is paused (``notifier pause``: every node obeys)."""
        if self.paused(job, slot):
            return None
        # a parameter holding a secret (jobs.yaml's ${SMTP_PASSWORD}) is stored hidden; the
        # execution refuses it, so the slot ends failed with the cause, and its failure
        # email says so
        run = self._claim(job, slot, trigger)
        if run is None:
            log.info("%s: slot %s is already taken; not running it twice", job.name, slot)
            return None
        # taken only once the slot is ours: a paused job, a slot another node won or a
        # ledger error leaves the prepared worker to the pool, which shuts it down
        prepared = None
        if trigger == "schedule" and self._prepared is not None:
            prepared = self._prepared(job, slot)
        return self.execute_claimed(job, run, prepared=prepared)

    def resume(self, job: Job, run: Run, *, trigger: str = "retry") -> RunResult | None:
        """Take over an interrupted run of the same slot (None when another process did, or
        the job is paused)."""
        if self.paused(job, run.slot):
            return None
        with self._claims:
            taken = self.ledger.reclaim(run.run_id, trigger=trigger, attempt=run.attempt)
            if taken is not None:
                self.active.add(taken.run_id)
        if taken is None:
            return None
        log.info(
            "%s: re-running interrupted slot %s (attempt %d)", job.name, run.slot, taken.attempt
        )
        return self.execute_claimed(job, taken)

    def run_now(self, job: Job, *, dry_run: bool = False) -> RunResult:
        """A run on request, in the manual lane (``notifier run``, the dashboard)."""
        return self.execute_claimed(job, self.claim_now(job), dry_run=dry_run)

    def claim_now(self, job: Job) -> Run:
        """Claim a manual-lane run of ``job`` without executing it (then :meth:`execute_claimed`).

        The dashboard's "Run now" claims first, so it can show the new run at once while
        the notebook executes in the background. Parameters holding a secret are refused
        (RunError) before anything is claimed: the ledger keeps a run's parameters.
        """
        refuse_secret_parameters(job.parameters, self.settings.secrets())
        run = self._claim(job, datetime.now(timezone.utc), "manual")
        if run is None:  # pragma: no cover - the manual lane moves a clashing slot by 1 µs
            raise NotifierError(f"Could not claim a manual run of {job.name}.", "try again")
        return run

    def _claim(self, job: Job, slot: datetime, trigger: str) -> Run | None:
        """``ledger.claim`` of ``(job, slot)``; a won claim joins :attr:`active` under the
        same lock, so release_orphans() never mistakes it for an orphan."""
        with self._claims:
            run = self.ledger.claim(
                job.name,
                slot,
                trigger=trigger,
                recipients=job.to,
                notebook=str(job.notebook),
                parameters=self._stored_parameters(job),
                failure_recipients=job.failure_recipients,
            )
            if run is not None:
                self.active.add(run.run_id)
        return run

    def _stored_parameters(self, job: Job) -> dict[str, Any]:
        """The job's parameters as the ledger may keep them: secrets hidden."""
        return redacted(dict(job.parameters), self.settings.secrets())

    # ------------------------------------------------------------- one run

    def execute_claimed(
        self,
        job: Job,
        run: Run,
        *,
        dry_run: bool = False,
        prepared: PreparedWorker | None = None,
    ) -> RunResult:
        """Run a slot this node holds, to the end of its first delivery pass (on the worker
        ``prepared`` for it, when given: used once, or shut down if the run never starts)."""
        result = RunResult(run, None)
        kind = "outbox" if dry_run or self.settings.uses_outbox else "default"
        self.active.add(run.run_id)
        try:
            self._execute_claimed(job, run, kind, result, prepared)
        except Fenced as fenced:
            log.warning("%s: %s; this node stops without delivering", job.name, fenced)
            result.fenced = True
        except LedgerError as error:  # one line, not a traceback: the database is down
            log.warning(
                "%s: run %s stopped: the ledger became unavailable (%s); once it is back the "
                "run is marked interrupted and re-run as its misfire policy allows",
                job.name,
                run.run_id,
                one_line(str(error), 300),
            )
            return result
        except Exception as error:  # the ledger must never keep a 'running' row for a dead run
            log.exception("%s: run %s crashed", job.name, run.run_id)
            text = f"internal error: {one_line(str(error), 400)}"
            try:
                if self._finish(run, "failed", error=text):
                    self._notice_not_started(job, run, text, None, kind)
            except LedgerError as gone:
                log.error("%s: the failure could not be recorded either: %s", job.name, gone)
        except BaseException:  # Ctrl-C during `notifier run`: visible, not 'running' forever
            try:  # not waited out: the user wants out now
                self.ledger.finish(
                    run.run_id, "interrupted", attempt=run.attempt, error="interrupted by the user"
                )
            except LedgerError as gone:
                log.error("%s: the interruption could not be recorded: %s", job.name, gone)
            raise
        finally:
            self.active.discard(run.run_id)
            if prepared is not None and not prepared.handed_over:  # the run never started
                prepared.discard()
        try:
            stored = self.ledger.get(run.run_id)
        except LedgerError:
            stored = None  # the run's own writes went through; only this read failed
        if stored is not None:
            result.run = stored
        if job.schedule is not None:
            apply_retention(self.ledger, self.settings, job)
        return result

    def release_orphans(self, reason: str) -> list[Run]:
        """Mark interrupted the runs this node holds in the ledger but no longer executes.

        After the ledger was unreachable: a claim whose answer was lost, or a run stopped
        because the ledger failed under it, would otherwise stay 'claimed'/'running' on a
        live node, which nobody takes over.
        """
        with self._claims:
            return self.ledger.mark_interrupted_mine(keep=set(self.active), reason=reason)

    def _ledger(self, call: Callable[[], T], what: str, *, wait: bool = True) -> T:
        """A ledger call of a run this node executes, waited out while the ledger is locked
        or unreachable (retried with backoff, one log line when the trouble starts and one
        when it ends): what the notebook produced stays in memory instead of being lost.

        Gives up (raising the LedgerError) only when the run must stop: at once once the
        shutdown's grace period is over (``abort``), or, with ``wait``, ``grace`` seconds
        after that; also after :data:`~notifier.ledger.retry.DEFAULT_PATIENCE` seconds
        (then the ledger is gone, not busy, and the run is re-run once it is back).
        """
        return self._patience.call(call, what, wait=wait, raise_on_give_up=True)

    def _still_holds(self, job: Job, run: Run) -> bool:
        """``ledger.holds`` after the notebook ran, waited out like every write of the run:
        the result is kept in memory rather than lost or sent unfenced."""
        return self._ledger(
            lambda: self.ledger.holds(run.run_id, run.attempt),
            f"checking that run {run.run_id} of {job.name} is still this node's",
        )

    def _finish(self, run: Run, status: str, **outcome: Any) -> bool:
        """``ledger.finish`` for this node's attempt, waited out while the ledger is busy."""
        return self._ledger(
            lambda: self.ledger.finish(run.run_id, status, attempt=run.attempt, **outcome),
            f"recording run {run.run_id} of {run.job} as {status}",
        )

    def _execute_claimed(
        self,
        job: Job,
        run: Run,
        kind: str,
        result: RunResult,
        prepared: PreparedWorker | None = None,
    ) -> None:
        started = self._ledger(
            lambda: self.ledger.mark_running(run.run_id, run.attempt),
            f"starting run {run.run_id} of {job.name}",
            wait=False,
        )
        if not started:
            raise Fenced(f"run {run.run_id} was taken over before it started")
        try:
            execution = self._execute_with_retries(job, request_for(job, run), run, prepared)
        except NotifierError as error:  # missing notebook, undeclared parameter, runs folder
            if self._finish(run, "failed", error=error.message):
                self._notice_not_started(job, run, error.message, error.fix, kind)
                result.outcomes += self.deliverer.deliver(
                    run_id=run.run_id, on_outcome=self.on_outcome
                )
            return
        result.execution = execution
        result.warnings += execution.warnings
        output = str(execution.output_notebook) if execution.output_notebook.is_file() else None
        if not self._still_holds(job, run):
            # Another node judged this one dead (a long stall) and took the slot over: it
            # delivers; sending here too could mail everyone twice.
            raise Fenced(f"run {run.run_id} was taken over by another node")
        # readable on every node
        run_files.keep(self.ledger, self.settings, run, execution, call=self._ledger)
        if self.stopping.is_set() and execution.status == "failed":
            self._finish(run, "interrupted", error="stopped by shutdown", output_path=output)
            return
        if execution.status == "skipped":
            note = self._recover(job, run, execution, kind)
            self._finish(
                run,
                "skipped",
                output_path=output,
                notes=_notes(run, f"{execution.skip_reason}{note}"),
            )
        elif execution.status == "succeeded":
            self._plan_and_queue(job, run, execution, kind, result)
        else:
            self._fail(job, run, execution, kind, execution.error or "the run failed")
        result.outcomes += self.deliverer.deliver(run_id=run.run_id, on_outcome=self.on_outcome)

    def _progress(self, run: Run) -> Callable[[dict[str, Any]], None]:
        """Where the worker's progress goes: the run's row, shown live by the dashboard."""
        return lambda progress: self.ledger.set_progress(run.run_id, progress)

    def _execute_with_retries(
        self, job: Job, request: RunRequest, run: Run, prepared: PreparedWorker | None = None
    ) -> Execution:
        attempts = job.retries.count + 1
        for attempt in range(1, attempts + 1):
            # the prepared worker serves the first attempt only; retries start cold
            warm = {"prepared": prepared} if prepared is not None and attempt == 1 else {}
            execution = self._execute(request, self.settings, progress=self._progress(run), **warm)
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

    # ------------------------------------------------------------ planning

    def _plan_and_queue(
        self, job: Job, run: Run, execution: Execution, kind: str, result: RunResult
    ) -> None:
        output = str(execution.output_notebook)
        extra = self._output_attachment(job, execution, result)
        try:
            check_keys(execution.emails)  # two emails with one key= would be taken for one
            messages = [
                self._plan(
                    job, replace(mail, attachments=[*mail.attachments, *extra]), kind, result
                )
                for mail in execution.emails
            ]
        except MessageError as error:
            execution.error = f"an email cannot be sent: {error.message}"
            execution.failure = {
                "kind": "compose",
                "ename": "MessageError",
                "evalue": f"{error.message}" + (f"\nFix: {error.fix}" if error.fix else ""),
            }
            self._fail(job, run, execution, kind, execution.error)
            return
        if not messages:
            self._finish(
                run, "succeeded", output_path=output, notes=_notes(run, "no emails declared")
            )
            return
        key = alerts.alert_key([(m.subject, m.recipients) for m in messages])
        until = self._ledger(
            lambda: alerts.cooling_down(self.ledger, job, run, key),
            f"looking up {job.name}'s last alert",
        )
        if until is not None:
            note = f"same alert sent before; cooldown until {until.isoformat()}"
            self._finish(
                run, "suppressed", output_path=output, alert_key=key, notes=_notes(run, note)
            )
            return
        subjects = "; ".join(dict.fromkeys(m.subject for m in messages))
        deliver = {
            "output_path": output,
            "alert_key": key,
            "notes": _notes(run, one_line(f"sent: {subjects}", 500)),
        }
        self._ledger(
            lambda: self.ledger.queue.enqueue(
                run.run_id, run.attempt, self.ledger.owner, messages, deliver=deliver
            ),
            f"queueing the emails of run {run.run_id} of {job.name}",
        )

    def _output_attachment(self, job: Job, execution: Execution, result: RunResult) -> list:
        """``attach_output: html | pdf``: the rendered output, once for all the run's emails."""
        if not job.attach_output or not execution.emails or not execution.output_html.is_file():
            return []
        from notifier.notebook.archive import output_attachment
        from notifier.notebook.execute import job_runs_folder

        name = job_runs_folder(Path("."), job.name).name
        try:
            return [output_attachment(execution.output_html, job.attach_output, f"{name}-output")]
        except NotifierError as error:  # no browser for the PDF: the report still goes out
            warning = f"the output could not be attached as {job.attach_output}: {error.message}"
            log.warning("%s: %s", job.name, warning)
            result.warnings.append(warning)
            return []

    def _check_secrets(self, mail: Email) -> None:
        """Refuse an email that carries the SMTP password (a notebook wrote it to a file)."""
        secrets = [s for s in self.settings.secrets() if len(s) >= 6]
        if not secrets:
            return
        parts = [*mail.attachments, *(image.part for image in mail.images)]
        for part in parts:
            if any(_carries(part.data, secret) for secret in secrets):
                raise MessageError(
                    f"The email {mail.subject!r} carries the SMTP password in "
                    f"{part.filename!r}; it was not sent.",
                    "never write credentials into files a notebook attaches",
                )
        bodies = "\n".join(filter(None, (mail.html, mail.text, mail.subject)))
        if any(secret in bodies for secret in secrets):
            raise MessageError(
                f"The email {mail.subject!r} carries the SMTP password in its text; it was "
                "not sent.",
                "never put credentials into an email",
            )

    def _plan(self, job: Job, mail: Email, kind: str, result: RunResult) -> NewMessage:
        self._check_secrets(mail)
        if not (mail.to or mail.cc or mail.bcc):
            if kind != "outbox":
                raise MessageError(
                    f"The email {mail.subject!r} has no recipients.",
                    "pass --to, set to: for the job in jobs.yaml, or report.email(..., to=[...])",
                )
            warning = (
                f"the email {mail.subject!r} has no recipients: written to the outbox as "
                "undisclosed-recipients (set to: in jobs.yaml, pass --to, or "
                "report.email(..., to=...))"
            )
            log.info("%s: %s", job.name, warning)
            result.warnings.append(warning)
            mail = replace(
                mail,
                bcc=[OUTBOX_ONLY_RECIPIENT],
                headers={**mail.headers, "To": UNDISCLOSED},
            )
        return plan_email(
            mail,
            purpose="report",
            default_sender=self.settings.from_address,
            max_size=self.settings.max_message_size,
            expires_at=self._expiry(job),
            transport=kind,
            on_unknown=job.on_unknown,
        )

    def _expiry(self, job: Job) -> datetime:
        lifetime = job.deliver_within_seconds or self.settings.delivery_lifetime
        return self.ledger.db.now() + timedelta(seconds=lifetime)

    # -------------------------------------------------------------- notices

    def _fail(self, job: Job, run: Run, execution: Execution, kind: str, error: str) -> None:
        """Queue the failure email (fenced), then record the run as failed."""
        recipients = job.failure_recipients
        if recipients:
            mail = run_failed_email(
                name=job.name,
                notebook=job.notebook,
                run_id=run.run_id,
                error=error,
                failure=execution.failure,
                run_folder=execution.run_dir,
                recipients=recipients,
                output_html=self._output_with_code(job, execution),
            )
            self._queue_notice(run, mail, "failure", kind)
        else:
            log.error("%s: run failed and nobody to tell (set on_failure: or to:)", job.name)
        output = str(execution.output_notebook) if execution.output_notebook.is_file() else None
        self._finish(run, "failed", error=error, output_path=output)

    def _output_with_code(self, job: Job, execution: Execution) -> Path | None:
        """The output to attach to a failure email: with the code, which helps there."""
        if not job.hide_code or not execution.output_notebook.is_file():
            return execution.output_html
        from notifier.notebook.archive import render_html, scrub_file

        with_code = execution.run_dir / "output-with-code.html"
        try:
            render_html(execution.output_notebook, with_code, hide_code=False)
        except Exception as error:  # a half-written notebook: attach what there is
            log.warning("%s: could not render the output with its code: %s", job.name, error)
            return execution.output_html
        scrub_file(with_code, self.settings.secrets())
        return with_code

    def _notice_not_started(
        self, job: Job, run: Run, message: str, fix: str | None, kind: str
    ) -> None:
        recipients = job.failure_recipients
        if not recipients:
            log.error("%s: %s (nobody to tell: set on_failure: or to:)", job.name, message)
            return
        mail = not_started_email(
            name=job.name,
            notebook=job.notebook,
            slot=run.slot,
            message=message,
            fix=fix,
            recipients=recipients,
        )
        self._queue_notice(run, mail, "failure", kind, fenced=False)

    def _queue_notice(
        self, run: Run, mail: Email, purpose: str, kind: str, *, fenced: bool = True
    ) -> None:
        try:
            message = self._plan_notice(mail, purpose, kind)
        except MessageError as error:
            log.error("%s: the %s email cannot be built: %s", run.job, purpose, error)
            return
        if fenced:
            self._ledger(
                lambda: self.ledger.queue.enqueue(
                    run.run_id, run.attempt, self.ledger.owner, [message]
                ),
                f"queueing the {purpose} email of run {run.run_id} of {run.job}",
            )
        else:
            self._ledger(
                lambda: self.ledger.queue.add(run.run_id, [message]),
                f"queueing the {purpose} email of run {run.run_id} of {run.job}",
            )

    def _plan_notice(self, mail: Email, purpose: str, kind: str) -> NewMessage:
        lifetime = timedelta(seconds=self.settings.delivery_lifetime)
        options: dict[str, Any] = {
            "purpose": purpose,
            "default_sender": self.settings.from_address,
            "expires_at": self.ledger.db.now() + lifetime,
            "transport": kind,
            "key": purpose,
        }
        try:
            return plan_email(
                mail,
                max_size=self.settings.max_message_size,
                optional_attachments=True,
                **options,
            )
        except MessageError:
            if not mail.attachments:
                raise
            # the output is too large to attach: say where it is instead
            note = "<p><i>The output notebook was too large to attach; it is in the run folder.</i></p>"
            return plan_email(
                replace(mail, attachments=[], html=(mail.html or "") + note),
                max_size=None,
                **options,
            )

    def _recover(self, job: Job, run: Run, execution: Execution, kind: str) -> str:
        """After an alert, the first quiet run mails 'recovered'. Returns a note for the ledger."""
        previous = self._ledger(
            lambda: alerts.recovery_due(self.ledger, job, run), f"looking up {job.name}'s alerts"
        )
        if previous is None:
            return ""
        recipients = self._ledger(
            lambda: alerts.alert_recipients(self.ledger, job, previous),
            f"looking up who got {job.name}'s alert",
        )
        if not recipients:
            return ""
        visible = [r for r in recipients if r in {*job.to, *job.cc}]
        hidden = [r for r in recipients if r not in visible]  # e.g. bcc: stays blind
        mail = recovery_email(
            name=job.name,
            reason=execution.skip_reason or "",
            alert_started=f"{previous.slot.astimezone(job.tz):%Y-%m-%d %H:%M %Z}",
            visible=visible,
            hidden=hidden,
        )
        self._queue_notice(run, mail, "recovery", kind)
        log.info("%s: recovered; recovery email queued", job.name)
        return " (recovery email queued)"


def _carries(data: bytes, secret: str) -> bool:
    """Does ``data`` hold ``secret``, as text or base64 (any of its three alignments)?"""
    import base64

    raw = secret.encode()
    if raw in data:
        return True
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)[4 * ((shift + 2) // 3) :]
        if encoded[:-4] and encoded[:-4] in data:
            return True
    return False


def adhoc_job(
    notebook: Path,
    *,
    name: str,
    parameters: dict[str, Any] | None = None,
    to: list[str] | None = None,
    cc: list[str] | None = None,
    bcc: list[str] | None = None,
    on_failure: list[str] | None = None,
    timeout: float | None = None,
    cell_timeout: float | None = None,
    timezone_name: str = "UTC",
    kernel: str | None = None,
    hide_code: bool = False,
    attach_output: str | None = None,
) -> Job:
    """A job for ``notifier run NOTEBOOK``: no schedule, no retries, no cooldown."""
    from zoneinfo import ZoneInfo

    from notifier.settings import DEFAULT_RUN_TIMEOUT as DEFAULT_TIMEOUT

    return Job(
        name=name,
        notebook=Path(notebook).resolve(),
        schedule=None,
        tz=ZoneInfo(timezone_name),
        parameters=dict(parameters or {}),
        to=tuple(to or ()),
        cc=tuple(cc or ()),
        bcc=tuple(bcc or ()),
        on_failure=tuple(on_failure or ()),
        timeout_seconds=timeout or DEFAULT_TIMEOUT,
        cell_timeout_seconds=cell_timeout,
        kernel=kernel,
        hide_code=hide_code,
        attach_output=attach_output,
    )
