"""What a worker asks the ledger before it computes anything (the queries of
:class:`docqueue.worker.ledger.SqlLedger`): the jobs of its messages, those
deleted, those that ended since its last poll, and the documents it was sent."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import Connection, and_, case, or_, select

from docqueue.db.schema import Item, Job, Tombstone

#: Bound parameters per statement when reading documents (SQLite allows 32,766).
MAX_PARAMETERS = 8_000
#: (jobs, sequence numbers): every job listed has all these sequence numbers wanted.
Term = tuple[list[str], list[int]]
#: How a job ended.
Ended = Literal["cancelled", "deleted"]


def jobs(conn: Connection, job_ids: Sequence[str]) -> Sequence[Any]:
    """The rows of those of ``job_ids`` the ledger holds: ``id``, ``cancelled_at``,
    ``task``, ``model``, ``params``, ``lane`` and ``reuse``."""
    columns = (Job.id, Job.cancelled_at, Job.task, Job.model, Job.params, Job.lane, Job.reuse)
    return conn.execute(select(*columns).where(Job.id.in_(list(job_ids)))).all()


def deleted(conn: Connection, job_ids: Collection[str]) -> Iterable[str]:
    """Those of ``job_ids`` that were deleted (their tombstones)."""
    return conn.execute(select(Tombstone.job_id).where(Tombstone.job_id.in_(job_ids))).scalars()


def ended_since(conn: Connection, since: float) -> dict[str, Ended]:
    """The jobs cancelled or deleted since ``since``."""
    cancelled = conn.execute(select(Job.id).where(Job.cancelled_at >= since)).scalars()
    found: dict[str, Ended] = dict.fromkeys(cancelled, "cancelled")
    gone = conn.execute(select(Tombstone.job_id).where(Tombstone.deleted_at >= since)).scalars()
    found.update(dict.fromkeys(gone, "deleted"))
    return found


def documents(
    conn: Connection, wanted: Mapping[str, Collection[int]]
) -> list[tuple[str, int, str | None, str | None, bool]]:
    """(job, seq, digest, text, chat) of each wanted document the ledger holds; the
    text only for rows without a digest (written before digests)."""
    found: list[tuple[str, int, str | None, str | None, bool]] = []
    for terms in _statements(wanted):
        found += _read_documents(conn, terms)
    return found


def _statements(wanted: Mapping[str, Collection[int]]) -> Iterable[list[Term]]:
    """The wanted documents as ``job IN (...) AND seq IN (...)`` terms, jobs that
    want the same sequence numbers sharing one (a round of single documents is one
    term), split so that no statement binds more than MAX_PARAMETERS values."""
    by_seqs: dict[frozenset[int], list[str]] = defaultdict(list)
    for job, seqs in wanted.items():
        by_seqs[frozenset(seqs)].append(job)
    statement: list[Term] = []
    size = 0
    for seqs, jobs in by_seqs.items():
        for start in range(0, len(jobs), MAX_PARAMETERS // 2):
            term = (jobs[start : start + MAX_PARAMETERS // 2], sorted(seqs))
            if statement and size + len(term[0]) + len(term[1]) > MAX_PARAMETERS:
                yield statement
                statement, size = [], 0
            statement.append(term)
            size += len(term[0]) + len(term[1])
    if statement:
        yield statement


def _read_documents(
    conn: Connection, terms: list[Term]
) -> list[tuple[str, int, str | None, str | None, bool]]:
    legacy_text = case((Item.digest.is_(None), Item.text), else_=None)
    rows = conn.execute(
        select(Item.job_id, Item.seq, Item.digest, legacy_text, Item.chat).where(
            or_(*(and_(Item.job_id.in_(jobs), Item.seq.in_(seqs)) for jobs, seqs in terms))
        )
    ).all()
    return [(job, seq, digest, text, bool(chat)) for job, seq, digest, text, chat in rows]
