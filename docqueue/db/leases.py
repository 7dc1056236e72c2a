"""Enqueue leases in SQL: a producer adding documents to a job holds it until
``dq_jobs.lease_until`` and renews that while it adds; when it closes the job (all
documents in) the lease ends.  A job whose lease lapsed first was left half-made
(its producer was killed, or lost the database for longer than the lease): workers
close it as failed, with a reason that says how to resubmit it, keeping the results
computed so far (:func:`close_lapsed`).  A retry that can complete it (the same
request with its Idempotency-Key, ``docqueue resume`` with its file) reopens it
(:func:`reopen`).

Every change is one conditional UPDATE, atomic on SQLite and PostgreSQL alike: of
two workers closing the same job one wins, and a producer renewing or reopening
never revives a job that was closed or cancelled meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from sqlalchemy import ColumnElement, Connection, delete, select, update

from docqueue.db import jobs as ledger
from docqueue.db.schema import Job, WebhookDelivery


def _open(job_ids: Sequence[str]) -> list[ColumnElement[bool]]:
    """The conditions of a job still being added to: not closed, cancelled or failed."""
    return [
        Job.id.in_(list(job_ids)),
        Job.total.is_(None),
        Job.cancelled_at.is_(None),
        Job.failure.is_(None),
    ]


def renew(conn: Connection, job_ids: Sequence[str], until: float) -> None:
    """Extend the producer's hold on those of ``job_ids`` still open (not closed,
    cancelled or failed meanwhile)."""
    conn.execute(update(Job).where(*_open(job_ids)).values(lease_until=until))


def reopen(conn: Connection, job_id: str, until: float) -> bool:
    """Take hold of a job again to complete it: one that failed because its lease
    lapsed, or one still open whose producer is gone.  Its webhook delivery, if it
    announced the failure, is dropped, so that its completion is announced too.
    False when the job is closed or cancelled."""
    reopened = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.total.is_(None), Job.cancelled_at.is_(None))
        .values(lease_until=until, failure=None, failed_at=None)
    ).rowcount
    if reopened:
        conn.execute(delete(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
    return bool(reopened)


def failure_of(conn: Connection, job_id: str) -> str | None:
    """Why the job failed as a whole, or None (called by its producer with each
    chunk: a producer that lost its hold stops adding)."""
    return conn.execute(select(Job.failure).where(Job.id == job_id)).scalar_one_or_none()


def lapsed(conn: Connection, now: float, limit: int = 100) -> list[str]:
    """Jobs whose producer's lease ended before ``now`` without closing them."""
    query = (
        select(Job.id)
        .where(Job.lease_until < now, Job.total.is_(None))
        .where(Job.cancelled_at.is_(None), Job.failure.is_(None))
        .order_by(Job.lease_until)
        .limit(limit)
    )
    return list(conn.execute(query).scalars())


def close_lapsed(conn: Connection, job_id: str, now: float) -> str | None:
    """Close one lapsed job as failed (if it still is lapsed: its producer may have
    renewed since); returns the reason written, or None."""
    job = ledger.get_job(conn, job_id)
    progress = ledger.progress(conn, job_id)
    if job is None or progress is None or job.lease_until is None:
        return None
    reason = lapse_reason(job, progress)
    closed = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_until < now, Job.total.is_(None))
        .where(Job.cancelled_at.is_(None), Job.failure.is_(None))
        .values(failed_at=now, failure=reason, lease_until=None)
    ).rowcount
    if not closed:
        return None
    ledger.record_finished(conn, [job_id], now)
    return reason


def lapse_reason(job: ledger.JobInfo, progress: ledger.Progress) -> str:
    """One line: what happened, what is kept, and how to resubmit."""
    since = datetime.fromtimestamp(job.lease_until or 0.0, tz=timezone.utc)
    what = (
        f"its producer stopped before all its documents were in (its hold on the job "
        f"lapsed at {since:%Y-%m-%d %H:%M:%S} UTC): {progress.enqueued} documents were "
        f"saved, {progress.done + progress.failed} of them have results (kept)"
    )
    if job.idempotency_key is not None:
        return f"{what}; send the same request again with its Idempotency-Key to complete it"
    if job.source is not None and job.input_digest is not None:
        return f"{what}; run `docqueue resume {job.id}` to complete it from {job.source}"
    return f"{what}; it cannot be completed: submit its documents again as a new job"
