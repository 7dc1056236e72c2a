"""The ledger of jobs and their documents: what producers write, and what status,
export and resume read back."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from docqueue.db.schema import DONE, FAILED, PENDING, Item, Job, Result


@dataclass(frozen=True)
class Progress:
    #: None while documents are still being enqueued.
    total: int | None
    enqueued: int
    done: int
    failed: int

    @property
    def pending(self) -> int:
        return self.enqueued - self.done - self.failed

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done + self.failed >= self.total


def create_job(
    conn: Connection,
    job_id: str,
    *,
    task: str,
    model: str,
    params: dict[str, Any],
    lane: str,
    source: str | None = None,
    total: int | None = None,
) -> None:
    conn.execute(
        insert(Job).values(
            id=job_id,
            task=task,
            model=model,
            params=params,
            lane=lane,
            source=source,
            total=total,
            created_at=time.time(),
        )
    )


def add_items(conn: Connection, job_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """Insert documents: dicts with seq, user_id, text, chat, truncated, and for
    documents rejected at the door, status=failed and error."""
    if not rows:
        return
    conn.execute(
        insert(Item),
        [
            {
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
            }
            for row in rows
        ],
    )
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
    """Record that all ``total`` documents are enqueued, and flag repeated user ids."""
    conn.execute(update(Job).where(Job.id == job_id).values(total=total))
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


def get_job(conn: Connection, job_id: str) -> JobInfo | None:
    row = conn.execute(select(Job.__table__).where(Job.id == job_id)).mappings().first()
    return JobInfo(**row) if row else None


def progress(conn: Connection, job_id: str) -> Progress:
    total = conn.execute(select(Job.total).where(Job.id == job_id)).scalar_one_or_none()
    counts = dict(
        conn.execute(
            select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
        ).all()
    )
    return Progress(
        total=total,
        enqueued=sum(counts.values()),
        done=counts.get(DONE, 0),
        failed=counts.get(FAILED, 0),
    )


def pending_items(
    conn: Connection, job_id: str, after_seq: int, limit: int
) -> list[tuple[int, str, bool]]:
    """(seq, text, chat) of documents not yet done or failed, in sequence order,
    after ``after_seq``."""
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
    conn: Connection, job_id: str, seqs: Sequence[int] | None = None, batch: int = 2000
) -> Iterator[Outcome]:
    """Each item with its result (if any), in sequence order, read in pages."""
    last = -1
    while True:
        query = (
            select(
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
            .outerjoin(Result, (Result.job_id == Item.job_id) & (Result.seq == Item.seq))
            .where(Item.job_id == job_id, Item.seq > last)
            .order_by(Item.seq)
            .limit(batch)
        )
        if seqs is not None:
            query = query.where(Item.seq.in_(seqs))
        rows = conn.execute(query).all()
        for r in rows:
            yield Outcome(
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
        if len(rows) < batch:
            return
        last = rows[-1][0]
