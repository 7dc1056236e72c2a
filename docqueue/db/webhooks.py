"""Webhook deliveries in SQL: written in the transaction that finishes a job, then
claimed, sent and retried by senders (:mod:`docqueue.webhooks`).

Exactly one row per finished job with a callback: the transaction that finishes
it locks the job's row first (PostgreSQL; SQLite has one writer at a time), so of
two workers committing a job's last documents at once the second sees the
first's rows and the delivery it wrote.  Claims are a conditional UPDATE, atomic
on SQLite and PostgreSQL alike, so two senders never hold one delivery at once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, literal, or_, select, update

from docqueue.db import progress as ledger
from docqueue.db.schema import Batch, Job, WebhookDelivery

#: The body's ``event`` field: the only event so far.
JOB_FINISHED = "job.finished"


def lock_hooked(conn: Connection, job_ids: Iterable[str]) -> list[str]:
    """Of ``job_ids``, the jobs with a callback, their rows locked (``FOR UPDATE``;
    SQLite ignores it) until the transaction ends.  In sorted order, so two
    transactions lock the same jobs in the same order."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return []
    return list(
        conn.execute(
            select(Job.id)
            .where(Job.id.in_(wanted), Job.callback_url.is_not(None))
            .order_by(Job.id)
            .with_for_update()
        ).scalars()
    )


class Callbacks:
    """Which jobs have a callback, remembered: a job's callback URL never changes
    once it is created, so a worker asks SQL about each job once instead of on
    every commit (that query cost 1.5 to 2.3 ms a commit on SQLite and 4.6 to 9.5
    ms on PostgreSQL, remembered under 1 us, on the 2-core machine at a load
    average of 16 to 20).  Jobs not found are not remembered."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._known: dict[str, bool] = {}

    def lock_hooked(self, conn: Connection, job_ids: Iterable[str]) -> list[str]:
        """:func:`lock_hooked`, asking SQL only about jobs not seen before."""
        wanted = set(job_ids)
        unknown = [job for job in wanted if job not in self._known]
        if unknown:
            found = conn.execute(
                select(Job.id, Job.callback_url.is_not(None)).where(Job.id.in_(unknown))
            ).all()
            if len(self._known) + len(found) > self.limit:
                self._known.clear()
            self._known.update({job: bool(hooked) for job, hooked in found})
        hooked = [job for job in wanted if self._known.get(job)]
        return lock_hooked(conn, hooked) if hooked else []


def record_deliveries(conn: Connection, job_ids: Iterable[str], now: float) -> int:
    """Write the delivery of each of ``job_ids`` that has a callback, is finished
    and has none yet; returns how many were written."""
    return write_deliveries(conn, lock_hooked(conn, job_ids), now)


def write_deliveries(conn: Connection, hooked: list[str], now: float) -> int:
    """:func:`record_deliveries` for jobs already locked by :func:`lock_hooked`."""
    written = 0
    for job_id in hooked:
        if conn.execute(select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id)).first():
            continue
        job = ledger.get_job(conn, job_id)
        progress = ledger.progress(conn, job_id)
        if job is None or job.callback_url is None or progress is None or not progress.finished:
            continue
        delivery_id = uuid.uuid4().hex
        body = summary(conn, job, progress, delivery_id, now)
        conn.execute(
            insert(WebhookDelivery).values(
                id=delivery_id,
                job_id=job_id,
                url=job.callback_url,
                body=json.dumps(body, separators=(",", ":"), sort_keys=True),
                created_at=now,
                attempts=0,
                next_at=now,
            )
        )
        written += 1
    return written


def summary(
    conn: Connection,
    job: ledger.JobInfo,
    progress: ledger.Progress,
    delivery_id: str,
    now: float,
) -> dict[str, Any]:
    """The body of a delivery: the numbers ``GET /api/jobs/{id}`` reports."""
    pace = ledger.pace(conn, job.id)
    elapsed, rate, _ = ledger.timing(job.created_at, progress, pace, now)
    return {
        "event": JOB_FINISHED,
        "delivery_id": delivery_id,
        "created_at": now,
        "job": {
            "id": job.id,
            "name": job.name,
            "state": progress.state,
            "task": job.task,
            "model": job.model,
            "model_label": job.model_label,
            "lane": job.lane,
            "source": job.source,
            "created_at": job.created_at,
            "cancelled_at": job.cancelled_at,
            "failure": progress.failure,
            "progress": {
                "total": progress.total,
                "enqueued": progress.enqueued,
                "done": progress.done,
                "failed": progress.failed,
                "cancelled": progress.cancelled,
                "pending": progress.pending,
                "reused": progress.reused,
            },
            "errors": ledger.error_counts(progress, pace.computed),
            "elapsed_seconds": elapsed,
            "docs_per_second": rate,
        },
    }


@dataclass(frozen=True)
class Due:
    """A delivery to attempt: where, what, and how many attempts it had; for an
    OpenAI-compatible batch, the batch it reports (sent as OpenAI's event)."""

    id: str
    job_id: str
    url: str
    body: str
    attempts: int
    created_at: float = 0.0
    #: The batch (``batch_<job_id>``) when the delivery reports one.
    batch_id: str | None = None
    #: The batch never had a job: it failed validation.
    batch_failed: bool = False
    batch_expired: bool = False
    job_name: str | None = None


#: Seconds a finished job named like a batch's job waits for its batch row (written
#: just after the job) before it is sent as a job of its own.
BATCH_ROW_WAIT = 60.0
_BATCH_PREFIX = "batch_"


def due(
    conn: Connection, now: float, limit: int = 20, skip_receivers: Sequence[str] = ()
) -> list[Due]:
    """Deliveries whose next attempt is due and that no sender holds, oldest first,
    but those to ``skip_receivers`` (``scheme://host:port``, busy in this sender)."""
    batch_id = literal(_BATCH_PREFIX) + WebhookDelivery.job_id
    query = (
        select(
            WebhookDelivery.id,
            WebhookDelivery.job_id,
            WebhookDelivery.url,
            WebhookDelivery.body,
            WebhookDelivery.attempts,
            WebhookDelivery.created_at,
            Batch.id,
            Batch.job_id.is_(None),
            Batch.expired_at.is_not(None),
            Job.name,
        )
        .outerjoin(Batch, Batch.id == batch_id)
        .outerjoin(Job, Job.id == WebhookDelivery.job_id)
        .where(WebhookDelivery.next_at <= now, _unleased(now))
        .order_by(WebhookDelivery.next_at)
        .limit(limit)
    )
    for receiver in skip_receivers:
        query = query.where(~_to_receiver(receiver))
    found = []
    for row in conn.execute(query).all():
        delivery = Due(
            *row[:6],
            batch_id=row[6],
            batch_failed=bool(row[6] and row[7]),
            batch_expired=bool(row[8]),
            job_name=row[9],
        )
        if _waiting_for_batch_row(delivery, now):
            continue
        found.append(delivery)
    return found


def _waiting_for_batch_row(delivery: Due, now: float) -> bool:
    """A batch's job can finish before ``POST /v1/batches`` wrote the batch's row;
    its delivery waits for the row, to go out as the batch's event."""
    named_as_batch = delivery.job_name == _BATCH_PREFIX + delivery.job_id
    return (
        delivery.batch_id is None and named_as_batch and now - delivery.created_at < BATCH_ROW_WAIT
    )


def _to_receiver(receiver: str) -> Any:
    """Whether a delivery's URL goes to ``receiver`` (``scheme://host:port``, the
    port left out too where it is the scheme's own)."""
    scheme, _, address = receiver.partition("://")
    host, _, port = address.rpartition(":")
    origins = [f"{scheme}://{host}:{port}"]
    if {"http": "80", "https": "443"}.get(scheme) == port:
        origins.append(f"{scheme}://{host}")
    url = func.lower(WebhookDelivery.url)
    matches = []
    for origin in origins:
        matches.append(url == origin)
        matches += [url.startswith(origin + end, autoescape=True) for end in "/?#"]
    return or_(*matches)


def batch_event(delivery: Due) -> dict[str, Any]:
    """OpenAI's batch webhook event for a delivery that reports a batch: its type
    from the batch (failed, expired) or its job's final state (cancelled,
    completed), the delivery's id and time."""
    if delivery.batch_failed:
        kind = "batch.failed"
    elif delivery.batch_expired:
        kind = "batch.expired"
    elif json.loads(delivery.body).get("job", {}).get("state") == "cancelled":
        kind = "batch.cancelled"
    else:
        kind = "batch.completed"
    return {
        "id": f"evt_{delivery.id}",
        "object": "event",
        "created_at": int(delivery.created_at),
        "type": kind,
        "data": {"id": delivery.batch_id},
    }


def record_batch_failed(conn: Connection, batch_id: str, url: str, now: float) -> None:
    """The delivery of a batch that failed validation (it has no job to finish):
    keyed by the batch's id without its ``batch_`` prefix, as a job's is."""
    delivery_id = uuid.uuid4().hex
    key = batch_id.removeprefix(_BATCH_PREFIX)
    event = batch_event(
        Due(delivery_id, key, url, "{}", 0, now, batch_id=batch_id, batch_failed=True)
    )
    conn.execute(
        insert(WebhookDelivery).values(
            id=delivery_id,
            job_id=key,
            url=url,
            body=json.dumps(event, separators=(",", ":"), sort_keys=True),
            created_at=now,
            attempts=0,
            next_at=now,
        )
    )


def _unleased(now: float) -> Any:
    return or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until <= now)


def claim(conn: Connection, delivery_id: str, now: float, lease: float) -> bool:
    """Take the delivery for ``lease`` seconds; False when another sender holds it or
    it is no longer due (sent meanwhile)."""
    claimed = conn.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.next_at <= now,
            _unleased(now),
        )
        .values(lease_until=now + lease)
    )
    return claimed.rowcount == 1


def delivered(conn: Connection, delivery_id: str, now: float) -> None:
    conn.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(
            delivered_at=now,
            next_at=None,
            lease_until=None,
            last_error=None,
            attempts=WebhookDelivery.attempts + 1,
        )
    )


def attempt_failed(
    conn: Connection, delivery_id: str, error: str, next_at: float | None, now: float
) -> None:
    """Record a failed attempt: retried at ``next_at``, or given up when None."""
    conn.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(
            next_at=next_at,
            failed_at=now if next_at is None else None,
            lease_until=None,
            last_error=error[:2000],
            attempts=WebhookDelivery.attempts + 1,
        )
    )


@dataclass(frozen=True)
class DeliveryState:
    """What SQL knows of a job's delivery."""

    id: str
    attempts: int
    delivered_at: float | None
    failed_at: float | None
    last_error: str | None
    next_at: float | None


def of_job(conn: Connection, job_id: str) -> DeliveryState | None:
    row = conn.execute(
        select(
            WebhookDelivery.id,
            WebhookDelivery.attempts,
            WebhookDelivery.delivered_at,
            WebhookDelivery.failed_at,
            WebhookDelivery.last_error,
            WebhookDelivery.next_at,
        ).where(WebhookDelivery.job_id == job_id)
    ).first()
    return DeliveryState(*row) if row else None


def forget(conn: Connection, created_before: float) -> int:
    """Delete deliveries created before ``created_before`` that are done with (sent
    or given up); returns how many."""
    return conn.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.created_at < created_before, WebhookDelivery.next_at.is_(None)
        )
    ).rowcount
