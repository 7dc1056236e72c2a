"""Counts over the ledger that benchmarks and drills check their runs with: result
rows (all, or a job's, or only those computed rather than reused), the distinct
documents they cover, the items' states and each worker's share."""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from docqueue.db.schema import Item, Result


def result_rows(conn: Connection, job_id: str | None = None, *, computed: bool = False) -> int:
    """Result rows, of one job where ``job_id`` is given; ``computed``: leave out
    copies of earlier results (reuse)."""
    query = select(func.count()).select_from(Result)
    if job_id is not None:
        query = query.where(Result.job_id == job_id)
    if computed:
        query = query.where(Result.reused.is_(False))
    return int(conn.execute(query).scalar_one())


def documents_with_results(conn: Connection, job_id: str) -> int:
    """A job's distinct documents that have a result row (equal to its rows when
    none is doubled)."""
    seqs = select(Result.seq).where(Result.job_id == job_id).distinct().subquery()
    return int(conn.execute(select(func.count()).select_from(seqs)).scalar_one())


def item_states(conn: Connection, job_id: str) -> dict[str, int]:
    """How many of a job's documents are in each state (pending, done, failed...)."""
    query = select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
    return {status: int(n) for status, n in conn.execute(query).all()}


def rows_per_worker(conn: Connection, job_id: str) -> dict[str | None, int]:
    """How many of a job's result rows each worker wrote."""
    query = (
        select(Result.worker_id, func.count())
        .where(Result.job_id == job_id)
        .group_by(Result.worker_id)
    )
    return {worker: int(n) for worker, n in conn.execute(query).all()}
