"""Worker heartbeats: which workers are alive and which models they serve."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from docqueue.db.schema import WorkerBeat


def beat(
    conn: Connection,
    worker_id: str,
    *,
    hostname: str,
    pid: int,
    device: str,
    models: dict[str, Any],
    started_at: float,
    documents: int,
    stopped: bool = False,
    stats: dict[str, int | None] | None = None,
) -> None:
    """Insert or refresh a worker's row; ``stats`` may carry batches, padded_tokens,
    peak_host_bytes and peak_gpu_bytes."""
    now = time.time()
    values = {
        "last_seen": now,
        "documents": documents,
        "stopped": stopped,
        "models": models,
        **(stats or {}),
    }
    changed = conn.execute(
        update(WorkerBeat).where(WorkerBeat.id == worker_id).values(**values)
    ).rowcount
    if changed:
        return
    try:
        with conn.begin_nested():
            conn.execute(
                insert(WorkerBeat).values(
                    id=worker_id,
                    hostname=hostname,
                    pid=pid,
                    device=device,
                    started_at=started_at,
                    **values,
                )
            )
    except IntegrityError:  # a concurrent first beat of the same id; harmless
        pass


@dataclass(frozen=True)
class WorkerState:
    id: str
    hostname: str
    device: str
    models: dict[str, Any]
    last_seen: float
    documents: int
    stopped: bool
    batches: int = 0
    padded_tokens: int = 0
    peak_host_bytes: int | None = None
    peak_gpu_bytes: int | None = None

    def alive(self, now: float, timeout: float) -> bool:
        return not self.stopped and now - self.last_seen <= timeout


def worker_state(conn: Connection, worker_id: str) -> WorkerState | None:
    states = _states(conn, WorkerBeat.id == worker_id)
    return states[0] if states else None


def every_worker(conn: Connection) -> list[WorkerState]:
    """Every worker that ever beat (and was not forgotten), newest heartbeat first."""
    return _states(conn)


def workers_serving(conn: Connection, model: str) -> list[WorkerState]:
    """Every worker that ever registered ``model``, newest heartbeat first."""
    return [s for s in _states(conn) if model in s.models]


def _states(conn: Connection, *where: Any) -> list[WorkerState]:
    query = select(WorkerBeat.__table__).where(*where).order_by(WorkerBeat.last_seen.desc())
    names = [f.name for f in fields(WorkerState)]
    return [WorkerState(**{n: row[n] for n in names}) for row in conn.execute(query).mappings()]


def worker_of_pid(engine: Engine, pid: int) -> str | None:
    """The id of the worker whose process ``pid`` beat (any host), or None: also
    before the worker has created the tables."""
    try:
        with engine.connect() as conn:
            query = select(WorkerBeat.id).where(WorkerBeat.pid == pid)
            return conn.execute(query).scalars().first()
    except DBAPIError:
        return None
