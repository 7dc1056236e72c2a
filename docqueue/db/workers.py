"""Worker heartbeats: which workers are alive and which models they serve."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

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
) -> None:
    now = time.time()
    values = {"last_seen": now, "documents": documents, "stopped": stopped, "models": models}
    changed = conn.execute(
        update(WorkerBeat).where(WorkerBeat.id == worker_id).values(**values)
    ).rowcount
    if changed:
        return
    try:
        with conn.begin_nested():
            conn.execute(
                WorkerBeat.__table__.insert().values(
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

    def alive(self, now: float, timeout: float) -> bool:
        return not self.stopped and now - self.last_seen <= timeout


def workers_serving(conn: Connection, model: str) -> list[WorkerState]:
    """Every worker that ever registered ``model``, newest heartbeat first."""
    query = select(WorkerBeat.__table__).order_by(WorkerBeat.last_seen.desc())
    states = [
        WorkerState(
            id=w["id"],
            hostname=w["hostname"],
            device=w["device"],
            models=w["models"],
            last_seen=w["last_seen"],
            documents=w["documents"],
            stopped=w["stopped"],
        )
        for w in conn.execute(query).mappings()
    ]
    return [s for s in states if model in s.models]
