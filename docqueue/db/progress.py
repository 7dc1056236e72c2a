"""A job as the ledger reads it back: what it is (:class:`JobInfo`), how far its
documents are (:class:`Progress`) and how fast they are computed (:class:`Pace`).

Apart from :mod:`docqueue.db.jobs`, which writes jobs, so that what reads a job
(a webhook's delivery body, the status the API reports) and what writes one
import this without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, func, select

from docqueue.db.schema import CANCELLED, DONE, FAILED, Item, Job, Result

#: What ``jobs`` can filter on: a job is cancelled once cancelled, failed once its
#: producer stopped before all its documents were in, else finished when every
#: document is done or failed, else running (still enqueuing, or computing).
JOB_STATES = ("running", "finished", "cancelled", "failed")


@dataclass(frozen=True)
class Progress:
    #: None while documents are still being enqueued.
    total: int | None
    enqueued: int
    done: int
    failed: int
    #: Documents of a cancelled job that were not computed.
    cancelled: int = 0
    #: When the job was cancelled (None: it was not).
    cancelled_at: float | None = None
    #: Documents done by copying an earlier result (counted in ``done`` too).
    reused: int = 0
    #: Why the job failed as a whole (None: it did not): its producer stopped before
    #: all its documents were in.  Its results so far are kept.
    failure: str | None = None

    @property
    def pending(self) -> int:
        return self.enqueued - self.done - self.failed - self.cancelled

    @property
    def finished(self) -> bool:
        """Nothing more will come: every document has its final state (done, failed,
        or cancelled), or the job failed as a whole."""
        if self.failure is not None:
            return True
        if self.cancelled_at is not None and self.pending == 0:
            return True
        return self.total is not None and self.done + self.failed + self.cancelled >= self.total

    @property
    def state(self) -> str:
        """One of :data:`JOB_STATES`."""
        if self.cancelled_at is not None:
            return "cancelled"
        if self.failure is not None:
            return "failed"
        return "finished" if self.finished else "running"


@dataclass(frozen=True)
class JobInfo:
    id: str
    task: str
    model: str
    params: dict[str, Any]
    lane: str
    source: str | None
    total: int | None
    created_at: float
    name: str | None = None
    input_digest: str | None = None
    cancelled_at: float | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None
    #: Whether workers copy earlier results of the same text, task, model and params.
    reuse: bool = False
    #: The multi-task group the job belongs to (None: a job of its own).
    group_id: str | None = None
    #: The model as the person named it, where ``model`` is an internal name.
    model_label: str | None = None

    #: Until when its producer holds it (None: closed, or made before leases).
    lease_until: float | None = None
    #: When and why it failed as a whole (None: it did not).
    failed_at: float | None = None
    failure: str | None = None

    @property
    def model_shown(self) -> str:
        """The model as a person reads it: its label, else its name."""
        return self.model_label or self.model


def get_job(conn: Connection, job_id: str) -> JobInfo | None:
    row = conn.execute(select(Job.__table__).where(Job.id == job_id)).mappings().first()
    return JobInfo(**row) if row else None


def progress(conn: Connection, job_id: str) -> Progress | None:
    """The job's counts, or None when there is no such job."""
    job = conn.execute(
        select(Job.total, Job.cancelled_at, Job.failure).where(Job.id == job_id)
    ).first()
    if job is None:
        return None
    counts = dict(
        conn.execute(
            select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
        ).all()
    )
    return progress_of(
        job.total,
        job.cancelled_at,
        counts,
        reused_counts(conn, [job_id]).get(job_id, 0),
        job.failure,
    )


def reused_counts(conn: Connection, job_ids: Sequence[str]) -> dict[str, int]:
    """How many documents of each job were done by copying an earlier result
    (jobs with none are left out)."""
    if not job_ids:
        return {}
    query = (
        select(Result.job_id, func.count())
        .where(Result.job_id.in_(list(job_ids)), Result.reused.is_(True))
        .group_by(Result.job_id)
    )
    return {job_id: count for job_id, count in conn.execute(query).all()}


def progress_of(
    total: int | None,
    cancelled_at: float | None,
    counts: dict[str, int],
    reused: int = 0,
    failure: str | None = None,
) -> Progress:
    return Progress(
        failure=failure,
        reused=reused,
        total=total,
        enqueued=sum(counts.values()),
        done=counts.get(DONE, 0),
        failed=counts.get(FAILED, 0),
        cancelled=counts.get(CANCELLED, 0),
        cancelled_at=cancelled_at,
    )


@dataclass(frozen=True)
class Pace:
    """How fast a job's documents are computed: the first start and last finish of
    the rows workers wrote, and how many they wrote."""

    first_started: float | None
    last_finished: float | None
    computed: int


def pace(conn: Connection, job_id: str) -> Pace:
    """Copies of earlier results (reuse) count towards the last finish, not as computed."""
    computed = func.sum(case((Result.reused.is_(False), 1), else_=0))
    row = conn.execute(
        select(func.min(Result.started_at), func.max(Result.finished_at), computed).where(
            Result.job_id == job_id, Result.worker_id.is_not(None)
        )
    ).one()
    return Pace(row[0], row[1], int(row[2] or 0))


def timing(
    created_at: float, progress: Progress, pace: Pace, now: float
) -> tuple[float, float | None, float | None]:
    """(elapsed, rate, eta) as the job status reports them: seconds from creation to
    now (once finished, to its last result; once cancelled, to the cancel or a
    result written after it), documents computed per second since the first
    started, and seconds until the pending ones are done at that rate."""
    end = now
    if progress.finished:
        end = max(progress.cancelled_at or 0.0, pace.last_finished or created_at)
    rate = None
    if pace.computed and pace.last_finished and pace.first_started is not None:
        rate = pace.computed / max(pace.last_finished - pace.first_started, 1e-3)
    eta = max(0, progress.pending) / rate if rate and not progress.finished else None
    return max(0.0, end - created_at), rate, eta


def error_counts(progress: Progress, computed: int) -> dict[str, int]:
    """A job's errors as its status reports them: failed, of which refused at the door
    and failed on a worker.  ``computed`` counts the rows workers wrote (:func:`pace`),
    which leaves out reused copies: those are done without a worker computing them."""
    on_workers = max(0, computed + progress.reused - progress.done)
    return {
        "failed": progress.failed,
        "refused": max(0, progress.failed - on_workers),
        "on_workers": on_workers,
    }
