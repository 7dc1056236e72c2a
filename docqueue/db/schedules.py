"""What docqueue's own database knows about schedules: runs, where each source
stands, which run holds a schedule now, and which beat leads (the SQL of
:mod:`docqueue.schedules`).

Claims and the lease are compare-and-set UPDATEs, so two beats (or a beat and a
``docqueue schedule run``) never both believe they hold the same thing, on SQLite
and on PostgreSQL alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from docqueue.db.schema import BeatLease, ScheduleFile, ScheduleMark, ScheduleRun

RUNS = cast(Table, ScheduleRun.__table__)
MARKS = cast(Table, ScheduleMark.__table__)
FILES = cast(Table, ScheduleFile.__table__)
LEASE = cast(Table, BeatLease.__table__)
RUNNING, SUCCEEDED, FAILED, SKIPPED, ABANDONED = (
    "running",
    "succeeded",
    "failed",
    "skipped",
    "abandoned",
)


@dataclass(frozen=True)
class Run:
    id: int
    schedule: str
    state: str
    started_at: float
    finished_at: float | None
    job_ids: list[str]
    mark_to: dict[str, Any] | None
    documents: int
    reused: int
    failed: int
    message: str | None


@dataclass(frozen=True)
class Claim:
    """A schedule claimed by a run; ``abandoned`` is the run it took over from (one
    whose beat stopped), whose work the new run finishes first."""

    run_id: int
    abandoned: Run | None


def start_run(engine: Engine, schedule: str) -> int:
    with engine.begin() as conn:
        result = conn.execute(
            insert(RUNS).values(
                schedule=schedule,
                state=RUNNING,
                started_at=time.time(),
                job_ids=[],
                documents=0,
                reused=0,
                failed=0,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


def claim(engine: Engine, schedule: str, run_id: int, stale_after: float) -> Claim | None:
    """Make ``run_id`` the schedule's running run, unless another is running and was
    heard from within ``stale_after`` seconds.  None: the other is still going."""
    now = time.time()
    with engine.begin() as conn:
        try:
            with conn.begin_nested():
                conn.execute(insert(MARKS).values(schedule=schedule))
        except IntegrityError:
            pass
        holder, heartbeat = conn.execute(
            select(MARKS.c.running_run, MARKS.c.heartbeat_at).where(MARKS.c.schedule == schedule)
        ).one()
        if holder is not None and (heartbeat or 0) > now - stale_after:
            return None
        taken = conn.execute(
            update(MARKS)
            .where(MARKS.c.schedule == schedule)
            .where(
                MARKS.c.running_run.is_(None) if holder is None else MARKS.c.running_run == holder
            )
            .values(running_run=run_id, heartbeat_at=now)
        )
        if taken.rowcount != 1:
            return None  # another took it between the read and the update
        abandoned = _abandon(conn, holder) if holder is not None else None
    return Claim(run_id, abandoned)


def _abandon(conn: Connection, run_id: int) -> Run | None:
    conn.execute(
        update(RUNS)
        .where(RUNS.c.id == run_id, RUNS.c.state == RUNNING)
        .values(state=ABANDONED, finished_at=time.time(), message="its beat stopped")
    )
    row = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
    return Run(**row) if row else None


def heartbeat(engine: Engine, schedule: str, run_id: int) -> bool:
    """Say the run is alive; False when it no longer holds the schedule."""
    with engine.begin() as conn:
        updated = conn.execute(
            update(MARKS)
            .where(MARKS.c.schedule == schedule, MARKS.c.running_run == run_id)
            .values(heartbeat_at=time.time())
        )
    return updated.rowcount == 1


def run_number(engine: Engine, schedule: str, run_id: int) -> int:
    """The run's number among its schedule's runs (1 for the first), as a person
    counts them: run ids are shared by every schedule."""
    query = select(func.count()).where(RUNS.c.schedule == schedule, RUNS.c.id <= run_id)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def plan(engine: Engine, run_id: int, job_ids: list[str], mark_to: dict[str, Any]) -> None:
    """Record the run's jobs and where the source will stand, before any job exists."""
    with engine.begin() as conn:
        conn.execute(
            update(RUNS).where(RUNS.c.id == run_id).values(job_ids=job_ids, mark_to=mark_to)
        )


def mark(engine: Engine, schedule: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        return conn.execute(
            select(MARKS.c.mark).where(MARKS.c.schedule == schedule)
        ).scalar_one_or_none()


def known_files(engine: Engine, schedule: str) -> dict[str, tuple[int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(FILES.c.path, FILES.c.size, FILES.c.digest).where(FILES.c.schedule == schedule)
        )
        return {path: (size, digest) for path, size, digest in rows}


def advance(engine: Engine, schedule: str, run_id: int, mark_to: dict[str, Any]) -> bool:
    """The documents up to ``mark_to`` are written back: move the source's mark, if
    ``run_id`` still holds the schedule.  False (nothing moved) when another run took
    it over meanwhile (this one went unheard for too long): that run moves the mark,
    and a late run never moves it back."""
    with engine.begin() as conn:
        values: dict[str, Any] = {"heartbeat_at": time.time()}
        if "watermark" in mark_to:
            values["mark"] = mark_to
        held = conn.execute(
            update(MARKS)
            .where(MARKS.c.schedule == schedule, MARKS.c.running_run == run_id)
            .values(**values)
        )
        if held.rowcount != 1:
            return False
        for path, (size, digest) in (mark_to.get("files") or {}).items():
            conn.execute(delete(FILES).where(FILES.c.schedule == schedule, FILES.c.path == path))
            conn.execute(
                insert(FILES).values(schedule=schedule, path=path, size=size, digest=digest)
            )
    return True


def finish(
    engine: Engine,
    schedule: str,
    run_id: int,
    state: str,
    *,
    documents: int = 0,
    reused: int = 0,
    failed: int = 0,
    message: str | None = None,
    release: bool = True,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(RUNS)
            .where(RUNS.c.id == run_id)
            .values(
                state=state,
                finished_at=time.time(),
                documents=documents,
                reused=reused,
                failed=failed,
                message=message,
            )
        )
        if release:
            conn.execute(
                update(MARKS)
                .where(MARKS.c.schedule == schedule, MARKS.c.running_run == run_id)
                .values(running_run=None, heartbeat_at=None)
            )


def runs(engine: Engine, schedule: str | None = None, limit: int = 20) -> list[Run]:
    query = select(RUNS).order_by(RUNS.c.id.desc()).limit(limit)
    if schedule is not None:
        query = query.where(RUNS.c.schedule == schedule)
    with engine.connect() as conn:
        return [Run(**row) for row in conn.execute(query).mappings()]


def last_run(engine: Engine, schedule: str, *, ran: bool = False) -> Run | None:
    """The schedule's newest run (``ran``: that was not skipped)."""
    query = select(RUNS).where(RUNS.c.schedule == schedule).order_by(RUNS.c.id.desc()).limit(1)
    if ran:
        query = query.where(RUNS.c.state != SKIPPED)
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return Run(**row) if row else None


def take_lease(engine: Engine, holder: str, seconds: float, name: str = "beat") -> bool:
    """Take or renew the lead for ``seconds``; False while another holds it."""
    now = time.time()
    with engine.begin() as conn:
        renewed = conn.execute(
            update(LEASE)
            .where(LEASE.c.name == name)
            .where((LEASE.c.holder == holder) | (LEASE.c.expires_at < now))
            .values(holder=holder, expires_at=now + seconds)
        )
        if renewed.rowcount == 1:
            return True
        if conn.execute(select(LEASE.c.name).where(LEASE.c.name == name)).first():
            return False
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(LEASE).values(name=name, holder=holder, expires_at=now + seconds)
                )
        except IntegrityError:
            return False
    return True


def lease_holder(engine: Engine, name: str = "beat") -> tuple[str, float] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(LEASE.c.holder, LEASE.c.expires_at).where(LEASE.c.name == name)
        ).first()
    return (row[0], row[1]) if row else None


def give_up_lease(engine: Engine, holder: str, name: str = "beat") -> None:
    with engine.begin() as conn:
        conn.execute(delete(LEASE).where(LEASE.c.name == name, LEASE.c.holder == holder))
