"""Stored files and batches of the OpenAI-compatible Batch API.

A file is written a chunk at a time inside one transaction, and read back a chunk
at a time: never held whole in memory, never seen half written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import Connection, delete, insert, select, tuple_, update

from docqueue.db.jobs import _in_state
from docqueue.db.schema import Batch, FileChunk, Job, StoredFile
from docqueue.errors import Refused

#: Bytes per stored chunk.
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileInfo:
    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    idempotency_key: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class BatchInfo:
    id: str
    #: None for a batch that failed before it had a job.
    job_id: str | None
    input_file_id: str
    endpoint: str
    completion_window: str
    batch_metadata: dict[str, str] | None
    options: dict[str, Any]
    errors: list[dict[str, Any]]
    created_at: float
    expires_at: float
    expired_at: float | None

    def job(self) -> str:
        """The id of the job that runs the lines (a failed batch has none)."""
        if self.job_id is None:
            raise ValueError(f"batch {self.id} failed: it has no job")
        return self.job_id


def store_file(
    conn: Connection,
    info: FileInfo,
    source: IO[bytes],
    digest: Any,
    limit: int,
) -> int:
    """Write ``source`` as the file ``info`` names, feeding ``digest``; returns its
    size.  Raises :class:`TooLarge` past ``limit`` bytes (the caller's transaction
    then rolls back: nothing stays)."""
    conn.execute(insert(StoredFile).values(**{**info.__dict__, "bytes": 0}))
    size = n = 0
    while block := source.read(CHUNK_BYTES):
        size += len(block)
        if size > limit:
            raise TooLarge(limit)
        digest.update(block)
        conn.execute(insert(FileChunk).values(file_id=info.id, n=n, data=block))
        n += 1
    conn.execute(
        update(StoredFile)
        .where(StoredFile.id == info.id)
        .values(bytes=size, digest=digest.hexdigest() if info.idempotency_key else None)
    )
    return size


class TooLarge(Refused, ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def get_file(conn: Connection, file_id: str) -> FileInfo | None:
    row = conn.execute(select(StoredFile.__table__).where(StoredFile.id == file_id)).first()
    return FileInfo(**row._mapping) if row else None


def file_with_key(conn: Connection, key: str) -> FileInfo | None:
    query = select(StoredFile.__table__).where(StoredFile.idempotency_key == key)
    row = conn.execute(query).first()
    return FileInfo(**row._mapping) if row else None


def list_files(
    conn: Connection, purpose: str | None, after: str | None, limit: int, order: str
) -> list[FileInfo]:
    """Files by ``created_at`` (then id), ``asc`` or ``desc``; from the file after
    ``after`` (a file id) on, or none when no such file is left."""
    table = StoredFile.__table__
    key = tuple_(StoredFile.created_at, StoredFile.id)
    query = select(table).order_by(
        *(
            (StoredFile.created_at, StoredFile.id)
            if order == "asc"
            else (StoredFile.created_at.desc(), StoredFile.id.desc())
        )
    )
    if purpose is not None:
        query = query.where(StoredFile.purpose == purpose)
    if after is not None:
        mark = conn.execute(
            select(StoredFile.created_at, StoredFile.id).where(StoredFile.id == after)
        ).first()
        if mark is None:
            return []
        bound = tuple_(mark[0], mark[1])
        query = query.where(key > bound if order == "asc" else key < bound)
    return [FileInfo(**row._mapping) for row in conn.execute(query.limit(limit))]


def delete_file(conn: Connection, file_id: str) -> bool:
    """Delete the file and its chunks; False when there is no such file."""
    conn.execute(delete(FileChunk).where(FileChunk.file_id == file_id))
    return conn.execute(delete(StoredFile).where(StoredFile.id == file_id)).rowcount == 1


def hold_file(conn: Connection, file_id: str) -> bool:
    """Lock the file's row until the caller's transaction ends (a write, so that
    SQLite and PostgreSQL alike make a concurrent :func:`delete_file` wait, or make
    this see its result); False when the file is gone."""
    touch = update(StoredFile).where(StoredFile.id == file_id).values(bytes=StoredFile.bytes)
    return conn.execute(touch).rowcount == 1


def chunk(conn: Connection, file_id: str, n: int) -> bytes | None:
    """The file's ``n``-th chunk, or None past its end."""
    query = select(FileChunk.data).where(FileChunk.file_id == file_id, FileChunk.n == n)
    return conn.execute(query).scalar()


def add_batch(conn: Connection, info: BatchInfo) -> None:
    conn.execute(insert(Batch).values(**info.__dict__))


def get_batch(conn: Connection, batch_id: str) -> BatchInfo | None:
    row = conn.execute(select(Batch.__table__).where(Batch.id == batch_id)).first()
    return _batch(row._mapping) if row else None


def batch_of_job(conn: Connection, job_id: str) -> BatchInfo | None:
    row = conn.execute(select(Batch.__table__).where(Batch.job_id == job_id)).first()
    return _batch(row._mapping) if row else None


def list_batches(conn: Connection, after: str | None, limit: int) -> list[BatchInfo]:
    """Newest first; from the batch after ``after`` (a batch id) on."""
    query = select(Batch.__table__).order_by(Batch.created_at.desc(), Batch.id.desc())
    if after is not None:
        mark = conn.execute(select(Batch.created_at, Batch.id).where(Batch.id == after)).first()
        if mark is None:
            return []
        query = query.where(tuple_(Batch.created_at, Batch.id) < tuple_(mark[0], mark[1]))
    return [_batch(row._mapping) for row in conn.execute(query.limit(limit))]


def due_batches(conn: Connection, now: float) -> list[BatchInfo]:
    """The batches past ``expires_at`` (before ``now``), not yet expired, whose job
    is still running: those that expire now."""
    query = (
        select(Batch.__table__)
        .join(Job, Job.id == Batch.job_id)
        .where(Batch.expired_at.is_(None), Batch.expires_at < now, _in_state("running"))
        .order_by(Batch.created_at, Batch.id)
    )
    return [_batch(row._mapping) for row in conn.execute(query)]


def mark_expired(conn: Connection, batch_id: str, now: float) -> None:
    conn.execute(
        update(Batch).where(Batch.id == batch_id, Batch.expired_at.is_(None)).values(expired_at=now)
    )


def _batch(row: Any) -> BatchInfo:
    values = dict(row)
    values["batch_metadata"] = values.pop("metadata")
    return BatchInfo(**values)


def file_chunks(conn_factory: Any, file_id: str) -> Iterator[bytes]:
    """The file's chunks in order, each read in a short transaction of its own
    (``conn_factory()`` gives a connection context)."""
    n = 0
    while True:
        with conn_factory() as conn:
            data = chunk(conn, file_id, n)
        if data is None:
            return
        yield data
        n += 1
