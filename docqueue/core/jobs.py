"""Jobs: a job's handle (its progress, status, cancel, delete, waiting, results and
export), the list of jobs, and pruning old ones."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docqueue.core import fleet
from docqueue.core.errors import UnknownJob
from docqueue.core.services import Services, services_of
from docqueue.db import jobs as ledger
from docqueue.db import webhooks
from docqueue.db.engine import one_snapshot
from docqueue.db.jobs import JOB_STATES, JobInfo, JobSummary, Progress
from docqueue.db.webhooks import DeliveryState
from docqueue.db.workers import WorkerState
from docqueue.formats.results import check_output, csv_columns, export_row, write_rows
from docqueue.producer.documents import Record


@dataclass(frozen=True)
class JobStatus:
    """What ``docqueue status`` shows: the job, its progress, its pace, and the live
    workers that serve its model and task."""

    job: JobInfo
    progress: Progress
    #: Live workers serving the job's model and task, newest heartbeat first.
    workers: list[WorkerState]
    #: When any worker that ever served the model was last heard of (None: never).
    last_seen: float | None
    #: Why no live worker runs the job's pending documents (None when one does, or
    #: when none is pending: the job finished or was cancelled).
    problem: str | None = None
    #: Seconds from the job's creation to now, or to its last result once finished.
    elapsed: float = 0.0
    #: Documents computed per second since the first one started (None: none yet).
    rate: float | None = None
    #: Seconds until the pending documents are done at that rate (None: unknown or
    #: finished).
    eta: float | None = None
    #: Documents workers computed (done, or failed on a worker); the rest of the
    #: failed ones were refused at the door.
    computed: int = 0

    def error_counts(self) -> dict[str, int]:
        """The job's errors: ``failed``, of which ``refused`` at the door and failed
        ``on_workers``."""
        return ledger.error_counts(self.progress, self.computed)


class JobHandle:
    """A bulk job: progress, waiting, results."""

    def __init__(self, owner: Services | Any, job_id: str, replayed: bool = False) -> None:
        """``owner``: the :class:`Services` (or a Client, which holds them)."""
        self.services, self.id = services_of(owner), job_id
        #: Documents refused at the door (error rows written by submit_many).
        self.rejected = 0
        #: The job was created by an earlier call with the same idempotency key.
        self.replayed = replayed

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r})"

    def info(self) -> JobInfo:
        """The job's task, model, parameters and lane; raises :class:`UnknownJob`."""
        with self.services.db.connect() as conn:
            job = ledger.get_job(conn, self.id)
        if job is None:
            raise UnknownJob(self.id)
        return job

    def webhook(self, *, send_due: bool = False) -> DeliveryState | None:
        """The delivery of the job's webhook (None without a callback URL, or
        before the job finished).  ``send_due``: attempt it here first if it is
        neither sent nor given up (annotate, whose workers may have stopped)."""
        with self.services.db.connect() as conn:
            state = webhooks.of_job(conn, self.id)
        if send_due and state is not None and not (state.delivered_at or state.failed_at):
            from docqueue.webhooks import Sender

            Sender(self.services.db, self.services.settings).run_once()
            with self.services.db.connect() as conn:
                state = webhooks.of_job(conn, self.id)
        return state

    def progress(self) -> Progress:
        """Raises :class:`UnknownJob` (a job deleted, or not created yet)."""
        with self.services.db.connect() as conn:
            current = ledger.progress(conn, self.id)
        if current is None:
            raise UnknownJob(self.id)
        return current

    def cancel(self) -> int:
        """Cancel the job: its documents not yet computed become ``cancelled`` (never
        computed, never an error row; :meth:`Client.resume` skips them), finished
        ones stay, and workers drop its messages.  A finished job is left as it
        is.  Returns how many documents were cancelled; raises :class:`UnknownJob`."""
        with self.services.db.begin() as conn:
            cancelled = ledger.cancel_job(conn, self.id, time.time())
        if cancelled is None:
            raise UnknownJob(self.id)
        return cancelled

    def delete(self) -> int:
        """Delete the job, its documents and results; workers drop its late messages
        (a tombstone stays).  Returns how many documents were deleted; raises
        :class:`UnknownJob`."""
        with self.services.db.begin() as conn:
            deleted = ledger.delete_job(conn, self.id, time.time())
        if deleted is None:
            raise UnknownJob(self.id)
        return deleted

    def status(self) -> JobStatus:
        """The job, its progress, its pace and the live workers serving its model and
        task (what ``docqueue status`` prints); raises :class:`UnknownJob`."""
        job = self.info()
        with self.services.db.connect() as conn:
            # progress and pace in one snapshot: the refused count is their difference
            conn = one_snapshot(conn)
            progress = ledger.progress(conn, self.id)
            pace = ledger.pace(conn, self.id)
        if progress is None:  # deleted meanwhile
            raise UnknownJob(self.id)
        now = time.time()
        coverage = fleet.coverage(self.services, job.model, job.task)
        elapsed, rate, eta = ledger.timing(job.created_at, progress, pace, now)
        return JobStatus(
            job,
            progress,
            coverage.doing,
            coverage.last_seen,
            # a finished job waits for nobody: no warning about gone workers
            problem=None if progress.finished else coverage.problem(now, job.model_shown),
            elapsed=elapsed,
            rate=rate,
            eta=eta,
            computed=pace.computed,
        )

    def why_waiting(self) -> str:
        """``"; no live worker serves model X (never seen)"`` when no live worker
        runs this job, else ``""``: what a timeout adds to its message."""
        try:
            job = self.info()
        except UnknownJob:
            return f"; no job {self.id}"
        problem = fleet.coverage(self.services, job.model, job.task).problem(shown=job.model_shown)
        return f"; {problem}" if problem else ""

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 0.5,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Progress:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.progress()
            if on_progress:
                on_progress(current)
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.id} not finished after {timeout}s: {current.done} done, "
                    f"{current.failed} failed, {current.pending} pending" + self.why_waiting()
                )
            time.sleep(poll)

    def results(self) -> Iterator[dict[str, Any]]:
        """Every document in input order: its id, seq and output fields or error."""
        with self.services.db.connect() as conn:
            for outcome in ledger.outcomes(conn, self.id):
                yield export_row(outcome)

    def results_page(
        self, after: int = -1, limit: int = 100, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` documents in input order from the first whose seq is above
        ``after``, as :meth:`results` gives them (a page: one short read); only those
        with ``status`` (pending, done, failed, cancelled) if given."""
        with self.services.db.connect() as conn:
            outcomes = ledger.outcomes(conn, self.id, batch=limit, after=after, status=status)
            return [export_row(o) for o in itertools.islice(outcomes, limit)]

    def paged_results(self, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every document as :meth:`results` gives them, read ``page`` at a time with
        no connection held between pages (a download that a slow reader drains)."""
        after = -1
        while rows := self.results_page(after, page):
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1]["seq"]

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        """The ``limit`` documents workers computed last, newest first, as
        :meth:`results` gives them."""
        with self.services.db.connect() as conn:
            return [export_row(o) for o in ledger.recent_outcomes(conn, self.id, limit)]

    def export(
        self,
        out: str | Path,
        on_row: Callable[[dict[str, Any]], None] | None = None,
        inputs: Iterable[Any] | None = None,
        text_field: str = "text",
    ) -> int:
        """Write the results to ``out`` (.jsonl, .csv with the task's columns,
        .parquet, a .hf dataset directory, or .labelstudio.json for classify and ner) and
        return how many rows.  ``inputs``: the job's input again, one row (a
        mapping, or a :class:`~docqueue.producer.documents.Record` with its fields)
        per document in order, whose fields each row then carries.  Checks the job
        and the file before writing anything; the file is replaced only once
        complete.  ``on_row`` sees each row as it is written.  Raises
        :class:`UnknownJob` or :class:`~docqueue.formats.results.OutputError`."""
        out = Path(out)
        job = self.info()
        check_output(out, job.task)
        rows = self.results()
        if on_row is not None:
            rows = _watched(rows, on_row)
        fields = None if inputs is None else (_fields_of(row) for row in inputs)
        return write_rows(
            rows,
            out,
            csv_columns(job.task, job.params),
            task=job.task,
            model=job.model_shown,
            inputs=fields,
            text_field=text_field,
        )


def _fields_of(row: Any) -> Mapping[str, Any] | None:
    return row.fields if isinstance(row, Record) else row


def _watched(
    rows: Iterator[dict[str, Any]], on_row: Callable[[dict[str, Any]], None]
) -> Iterator[dict[str, Any]]:
    for row in rows:
        on_row(row)
        yield row


def list_jobs(
    services: Services,
    state: str | None = None,
    model: str | None = None,
    name: str | None = None,
    limit: int = 50,
    interactive: bool = False,
) -> list[JobSummary]:
    """Jobs, newest first, with their progress: ``state`` is running, finished,
    cancelled or failed (see :data:`~docqueue.db.jobs.JOB_STATES`), ``model`` the model
    name the job was queued for, ``name`` the job's name.  The one-document jobs
    of :func:`~docqueue.core.submit.submit` (one per call: a web backend makes many) are listed only
    with ``interactive=True``."""
    if state is not None and state not in JOB_STATES:
        raise ValueError(f"job state {state!r}: use {', '.join(JOB_STATES)}")
    if limit < 1:
        raise ValueError(f"limit {limit}: use 1 or more")
    lane = None if interactive else "bulk"
    with services.db.connect() as conn:
        return ledger.list_jobs(conn, state=state, model=model, name=name, lane=lane, limit=limit)


def prune(services: Services, older_than_days: float | None = None) -> list[str]:
    """Delete finished and cancelled jobs created more than ``older_than_days``
    (default: the ``retention_days`` setting) days ago, texts and results, each
    leaving a tombstone; forget tombstones older than that (but never younger
    than the visibility timeout, so a message still out there finds its
    tombstone), and webhook deliveries sent or given up that long ago.  Running
    jobs are kept.  Returns the ids deleted."""
    days = services.settings.retention_days if older_than_days is None else older_than_days
    if not days > 0:
        raise ValueError(f"older than {days} days: use a number of days above 0")
    if days == float("inf"):
        return []
    now = time.time()
    keep = days * 86400.0
    deleted: list[str] = []
    while True:
        with services.db.connect() as conn:
            ids = ledger.finished_before(conn, now - keep, limit=100)
        for job_id in ids:
            with services.db.begin() as conn:
                if ledger.delete_job(conn, job_id, now) is not None:
                    deleted.append(job_id)
        if len(ids) < 100:
            break
    with services.db.begin() as conn:
        ledger.forget_tombstones(conn, now - max(keep, services.settings.visibility_timeout))
        webhooks.forget(conn, now - keep)
    return deleted
