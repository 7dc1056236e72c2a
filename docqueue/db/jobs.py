"""The ledger of jobs and their documents: what producers write, and what status,
export and resume read back (a job and its progress as read back are in
:mod:`docqueue.db.progress`, named here too)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)

from docqueue.db.progress import JOB_STATES as JOB_STATES
from docqueue.db.progress import JobInfo as JobInfo
from docqueue.db.progress import Pace as Pace
from docqueue.db.progress import Progress as Progress
from docqueue.db.progress import error_counts as error_counts
from docqueue.db.progress import get_job as get_job
from docqueue.db.progress import pace as pace
from docqueue.db.progress import progress as progress
from docqueue.db.progress import progress_of, reused_counts
from docqueue.db.progress import timing as timing
from docqueue.db.schema import (
    CANCELLED,
    FAILED,
    PENDING,
    Item,
    Job,
    Result,
    Tombstone,
    WebhookDelivery,
)
from docqueue.db.webhooks import record_deliveries
from docqueue.jobspec import JobSpec


def create_job(
    conn: Connection,
    job_id: str,
    spec: JobSpec,
    *,
    total: int | None = None,
    lease_until: float | None = None,
) -> None:
    """Insert the job's row; raises IntegrityError when ``spec.idempotency_key``
    already names a job (one made by a concurrent request with that key).
    ``lease_until``: the producer holds the job until then
    (:mod:`docqueue.core.lease`)."""
    # Newer columns are written only when set, so that a plain job is the same
    # insert on a ledger of an older revision (tests of migrations write those).
    optional = {
        "idempotency_key": spec.idempotency_key,
        "callback_url": spec.callback_url,
        "reuse": spec.reuse or None,
        "group_id": spec.group_id,
        "model_label": spec.model_label,
        "lease_until": lease_until,
    }
    conn.execute(
        insert(Job).values(
            id=job_id,
            task=spec.task,
            model=spec.model,
            params=spec.params,
            lane=spec.lane,
            source=spec.source,
            total=total,
            created_at=time.time(),
            name=spec.name,
            input_digest=spec.input_digest,
            **{column: value for column, value in optional.items() if value is not None},
        )
    )


def id_taken(conn: Connection, job_id: str) -> str | None:
    """Why ``job_id`` cannot name a new job (in use, or deleted: workers drop the
    messages of a deleted job), or None."""
    if conn.execute(select(Job.id).where(Job.id == job_id)).first():
        return f"job id {job_id} is already in use"
    if conn.execute(select(Tombstone.job_id).where(Tombstone.job_id == job_id)).first():
        return f"job id {job_id} belonged to a deleted job; use a new id"
    return None


def add_items(conn: Connection, job_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """Insert documents: dicts with seq, user_id, text, chat, truncated, digest, and
    for documents rejected at the door, status=failed and error."""
    if not rows:
        return
    conn.execute(insert(Item), [_item_values(job_id, row) for row in rows])
    rejected = [row for row in rows if row.get("status") == FAILED]
    if rejected:
        conn.execute(
            insert(Result),
            [
                {
                    "job_id": job_id,
                    "seq": row["seq"],
                    "ok": False,
                    "error": row["error"],
                    "truncated": row.get("truncated", False),
                }
                for row in rejected
            ],
        )


def close_job(conn: Connection, job_id: str, total: int) -> None:
    """Record that all ``total`` documents are enqueued (the producer's lease ends),
    and flag repeated user ids."""
    conn.execute(update(Job).where(Job.id == job_id).values(total=total, lease_until=None))
    repeated = (
        select(Item.user_id)
        .where(Item.job_id == job_id, Item.user_id.is_not(None))
        .group_by(Item.user_id)
        .having(func.count() > 1)
    )
    conn.execute(
        update(Item)
        .where(Item.job_id == job_id, Item.user_id.in_(repeated))
        .values(duplicate_id=True)
    )
    record_finished(conn, [job_id], time.time())


def _item_values(job_id: str, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "seq": row["seq"],
        "user_id": row.get("user_id"),
        "text": row["text"],
        "chat": row.get("chat", False),
        "status": row.get("status", PENDING),
        "attempts": 0,
        "error": row.get("error"),
        "truncated": row.get("truncated", False),
        "duplicate_id": False,
        "digest": row.get("digest"),
    }


@dataclass(frozen=True)
class SingleJob:
    """A one-document job of the interactive lane, as :func:`create_single_jobs` writes
    it; ``item`` is an :func:`add_items` row."""

    id: str
    task: str
    model: str
    params: dict[str, Any]
    item: dict[str, Any]


def create_single_jobs(conn: Connection, jobs: Sequence[SingleJob]) -> None:
    """Insert many one-document jobs (without idempotency keys) and their documents:
    one statement for the jobs and one for the documents, whatever their number."""
    if not jobs:
        return
    now = time.time()
    conn.execute(
        insert(Job),
        [
            {
                "id": job.id,
                "task": job.task,
                "model": job.model,
                "params": job.params,
                "lane": "interactive",
                "source": None,
                "total": 1,
                "created_at": now,
                "name": None,
                "input_digest": None,
            }
            for job in jobs
        ],
    )
    conn.execute(insert(Item), [_item_values(job.id, job.item) for job in jobs])


def group_jobs(conn: Connection, group_id: str) -> list[str]:
    """The ids of the group's jobs, in the order of its tasks (their ids sort so)."""
    query = select(Job.id).where(Job.group_id == group_id).order_by(Job.id)
    return list(conn.execute(query).scalars())


def job_with_key(conn: Connection, idempotency_key: str) -> JobInfo | None:
    """The job a request with this idempotency key created, or None."""
    query = select(Job.__table__).where(Job.idempotency_key == idempotency_key)
    row = conn.execute(query).mappings().first()
    return JobInfo(**row) if row else None


# --- managing jobs: list, cancel, delete, prune ---------------------------------------


@dataclass(frozen=True)
class JobSummary:
    """A job and its progress, as ``docqueue jobs`` lists it."""

    job: JobInfo
    progress: Progress


def _has_pending() -> ColumnElement[bool]:
    return exists().where(Item.job_id == Job.id, Item.status == PENDING)


def _in_state(state: str) -> ColumnElement[bool]:
    """SQL for :attr:`Progress.state` (a job's total is set once all its documents
    are in, so a closed job with nothing pending is finished)."""
    if state == "cancelled":
        return Job.cancelled_at.is_not(None)
    if state == "failed":
        return Job.cancelled_at.is_(None) & Job.failure.is_not(None)
    going = Job.cancelled_at.is_(None) & Job.failure.is_(None)
    if state == "finished":
        return going & Job.total.is_not(None) & ~_has_pending()
    if state == "running":
        return going & (Job.total.is_(None) | _has_pending())
    raise ValueError(f"job state {state!r}: expected one of {', '.join(JOB_STATES)}")


def list_jobs(
    conn: Connection,
    *,
    state: str | None = None,
    model: str | None = None,
    name: str | None = None,
    lane: str | None = None,
    limit: int = 50,
) -> list[JobSummary]:
    """Jobs, newest first, with their progress."""
    query = select(Job.__table__).order_by(Job.created_at.desc(), Job.id).limit(limit)
    if lane is not None:
        query = query.where(Job.lane == lane)
    if state is not None:
        query = query.where(_in_state(state))
    if model is not None:  # the name workers know, or the one the person gave
        query = query.where((Job.model == model) | (Job.model_label == model))
    if name is not None:
        query = query.where(Job.name == name)
    jobs = [JobInfo(**row) for row in conn.execute(query).mappings()]
    counts: dict[str, dict[str, int]] = {job.id: {} for job in jobs}
    if jobs:
        for job_id, status, count in conn.execute(
            select(Item.job_id, Item.status, func.count())
            .where(Item.job_id.in_(list(counts)))
            .group_by(Item.job_id, Item.status)
        ):
            counts[job_id][status] = count
    reused = reused_counts(conn, [job.id for job in jobs])
    return [
        JobSummary(
            job,
            progress_of(
                job.total, job.cancelled_at, counts[job.id], reused.get(job.id, 0), job.failure
            ),
        )
        for job in jobs
    ]


def pending_by_model(conn: Connection) -> dict[str, int]:
    """Documents without a result yet, per model, over the jobs not cancelled:
    queued in Redis, held by workers, or not yet published by a producer still
    adding them.  Models with none are left out."""
    query = (
        select(Job.model, func.count())
        .select_from(Item)
        .join(Job, Job.id == Item.job_id)
        .where(Item.status == PENDING, Job.cancelled_at.is_(None))
        .group_by(Job.model)
    )
    return {model: int(count) for model, count in conn.execute(query)}


def cancel_job(conn: Connection, job_id: str, now: float) -> int | None:
    """Cancel a job that has not finished: its pending documents become ``cancelled``
    (finished ones stay).  Returns how many were cancelled; None for no such job.

    Writes come first (SQLite: a transaction that reads before it writes can fail
    to get the write lock); a producer still adding documents locks the job row
    too (:func:`cancelled_while_adding`), so none of its documents slip past."""
    conn.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancelled_at.is_(None),
            Job.total.is_(None) | _has_pending(),
        )
        .values(cancelled_at=now)
    )
    job = conn.execute(select(Job.cancelled_at).where(Job.id == job_id)).first()
    if job is None:
        return None
    if job.cancelled_at is None:
        return 0
    cancelled = _cancel_pending(conn, job_id)
    record_finished(conn, [job_id], now)
    return cancelled


def _cancel_pending(conn: Connection, job_id: str) -> int:
    return conn.execute(
        update(Item).where(Item.job_id == job_id, Item.status == PENDING).values(status=CANCELLED)
    ).rowcount


def cancelled_while_adding(conn: Connection, job_id: str) -> bool:
    """Called by a producer after adding documents, in the same transaction: if the
    job was cancelled meanwhile, cancel what was just added and return True."""
    cancelled_at = conn.execute(
        select(Job.cancelled_at).where(Job.id == job_id).with_for_update()
    ).scalar_one_or_none()
    if cancelled_at is None:
        return False
    _cancel_pending(conn, job_id)
    return True


def delete_job(conn: Connection, job_id: str, now: float) -> int | None:
    """Delete a job, its documents and results, and leave a tombstone so workers
    drop its late messages.  Returns the number of documents deleted; None for no
    such job."""
    conn.execute(delete(Result).where(Result.job_id == job_id))
    # Its webhook too, sent or not: a deleted job (one the API refused, say) is
    # not announced.
    conn.execute(delete(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
    deleted = conn.execute(delete(Item).where(Item.job_id == job_id)).rowcount
    if not conn.execute(delete(Job).where(Job.id == job_id)).rowcount:
        return None
    conn.execute(delete(Tombstone).where(Tombstone.job_id == job_id))
    conn.execute(insert(Tombstone).values(job_id=job_id, deleted_at=now))
    return deleted


def finished_before(conn: Connection, created_before: float, limit: int = 1000) -> list[str]:
    """Finished, cancelled or failed jobs created before ``created_before``, oldest
    first."""
    return list(
        conn.execute(
            select(Job.id)
            .where(
                Job.created_at < created_before,
                _in_state("finished") | _in_state("cancelled") | _in_state("failed"),
            )
            .order_by(Job.created_at)
            .limit(limit)
        ).scalars()
    )


def forget_tombstones(conn: Connection, deleted_before: float) -> int:
    return conn.execute(delete(Tombstone).where(Tombstone.deleted_at < deleted_before)).rowcount


def pending_items(
    conn: Connection, job_id: str, after_seq: int, limit: int
) -> list[tuple[int, str, bool]]:
    """(seq, text, chat) of documents still pending (not done, failed or
    cancelled), in sequence order, after ``after_seq``."""
    return [
        (row.seq, row.text, row.chat)
        for row in conn.execute(
            select(Item.seq, Item.text, Item.chat)
            .where(Item.job_id == job_id, Item.status == PENDING, Item.seq > after_seq)
            .order_by(Item.seq)
            .limit(limit)
        )
    ]


@dataclass(frozen=True)
class Outcome:
    seq: int
    user_id: str | None
    status: str
    output: dict[str, Any] | None
    embedding: bytes | None
    error: str | None
    truncated: bool
    duplicate_id: bool
    worker_id: str | None


def outcomes(
    conn: Connection,
    job_id: str,
    seqs: Sequence[int] | None = None,
    batch: int = 2000,
    after: int = -1,
    status: str | None = None,
) -> Iterator[Outcome]:
    """Each item with its result (if any), in sequence order from the first after
    ``after``, read in pages of ``batch``; only those with ``status`` if given."""
    last = after
    while True:
        query = (
            _outcome_query()
            .where(Item.job_id == job_id, Item.seq > last)
            .order_by(Item.seq)
            .limit(batch)
        )
        if seqs is not None:
            query = query.where(Item.seq.in_(seqs))
        if status is not None:
            query = query.where(Item.status == status)
        rows = conn.execute(query).all()
        yield from (_outcome(r) for r in rows)
        if len(rows) < batch:
            return
        last = rows[-1][0]


def recent_outcomes(conn: Connection, job_id: str, limit: int) -> list[Outcome]:
    """The ``limit`` documents of the job that workers finished last, newest first
    (what the live page shows as recent results)."""
    query = (
        _outcome_query(inner=True)
        .where(
            Item.job_id == job_id,
            Result.worker_id.is_not(None),
            Result.finished_at.is_not(None),  # PostgreSQL sorts NULL first when descending
        )
        .order_by(Result.finished_at.desc(), Item.seq.desc())
        .limit(limit)
    )
    return [_outcome(r) for r in conn.execute(query)]


def _outcome_query(inner: bool = False) -> Select[Any]:
    on = (Result.job_id == Item.job_id) & (Result.seq == Item.seq)
    columns = select(
        Item.seq,
        Item.user_id,
        Item.status,
        Item.error,
        Item.truncated,
        Item.duplicate_id,
        Result.output,
        Result.embedding,
        Result.error,
        Result.worker_id,
    )
    return columns.join(Result, on) if inner else columns.outerjoin(Result, on)


def _outcome(r: Any) -> Outcome:
    return Outcome(
        seq=r[0],
        user_id=r[1],
        status=r[2],
        output=r[6],
        embedding=r[7],
        error=r[8] or r[3],
        truncated=r[4],
        duplicate_id=r[5],
        worker_id=r[9],
    )


def record_finished(conn: Connection, job_ids: Iterable[str], now: float) -> None:
    """Called in each transaction that can finish a job (results written, the job
    closed, cancelled): its webhook delivery, when it has a callback."""
    record_deliveries(conn, job_ids, now)
