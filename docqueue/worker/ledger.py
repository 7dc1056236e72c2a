"""What a worker asks the ledger before it computes anything: does the job of a
message exist in this worker's database, and was it cancelled or deleted?

A worker must never ack a message it cannot record: a job its database does not
hold (a worker pointed at another database, or a message that came before its
job) goes back to the queue for a worker that has it.  A cancelled or deleted
job's documents are dropped without being computed.

The answers are cached (jobs are looked up once, then only the jobs that ended
since the last poll are read), so the check costs one small query per intake
round, not one per document.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Literal, Protocol

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from docqueue.db.schema import Job, Tombstone
from docqueue.errors import one_line
from docqueue.worker.store import StoreUnavailable

JobState = Literal["active", "cancelled", "deleted"]

#: Jobs remembered per state (LRU): one single-document job per backend request adds up.
CACHE_SIZE = 100_000
#: The ledger's clock is the producers': jobs ended this long before the last poll
#: are read again, so clock skew between machines cannot hide a cancellation.
CLOCK_SKEW = 60.0


class Ledger(Protocol):
    def states(self, job_ids: Collection[str]) -> dict[str, JobState]:
        """The state of each job the database knows (a deleted one by its
        tombstone); jobs it has never heard of are left out.  Raises
        :class:`StoreUnavailable` when the database is away."""

    def ended_since(self, since: float) -> dict[str, JobState]:
        """Jobs cancelled or deleted at or after ``since`` (epoch seconds)."""


class SqlLedger:
    def __init__(self, db: Engine) -> None:
        self.db = db

    def states(self, job_ids: Collection[str]) -> dict[str, JobState]:
        ids = list(job_ids)
        try:
            with self.db.connect() as conn:
                jobs = conn.execute(select(Job.id, Job.cancelled_at).where(Job.id.in_(ids))).all()
                deleted = conn.execute(
                    select(Tombstone.job_id).where(Tombstone.job_id.in_(ids))
                ).scalars()
                found: dict[str, JobState] = dict.fromkeys(deleted, "deleted")
        except SQLAlchemyError as exc:
            raise StoreUnavailable(one_line(exc)) from exc
        for job_id, cancelled_at in jobs:
            found[job_id] = "active" if cancelled_at is None else "cancelled"
        return found

    def ended_since(self, since: float) -> dict[str, JobState]:
        try:
            with self.db.connect() as conn:
                cancelled = conn.execute(select(Job.id).where(Job.cancelled_at >= since)).scalars()
                found: dict[str, JobState] = dict.fromkeys(cancelled, "cancelled")
                deleted = conn.execute(
                    select(Tombstone.job_id).where(Tombstone.deleted_at >= since)
                ).scalars()
                found.update(dict.fromkeys(deleted, "deleted"))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(one_line(exc)) from exc
        return found


class OpenLedger:
    """Every job is active: the engine run offline has no ledger to ask."""

    def states(self, job_ids: Collection[str]) -> dict[str, JobState]:
        return dict.fromkeys(job_ids, "active")

    def ended_since(self, since: float) -> dict[str, JobState]:
        return {}


class JobStates:
    """This worker's view of the jobs it has work for (used by the intake thread,
    read by the compute thread)."""

    def __init__(
        self,
        ledger: Ledger,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.poll_interval = poll_interval
        self._clock = clock
        self._known: OrderedDict[str, JobState] = OrderedDict()
        self._last_poll = clock()

    def lookup(self, job_ids: Collection[str]) -> dict[str, JobState | None]:
        """Each job's state; None for a job the database does not hold.  When the
        database is away, jobs not yet known count as active (their rows wait in
        the writer until it is back, as any others)."""
        missing = [j for j in set(job_ids) if j not in self._known]
        if missing:
            try:
                found = self.ledger.states(missing)
            except StoreUnavailable:
                found = dict.fromkeys(missing, "active")
            for job_id, state in found.items():
                self._remember(job_id, state)
        return {job_id: self._known.get(job_id) for job_id in job_ids}

    def poll(self) -> set[str]:
        """Learn which jobs ended since the last poll (at most every poll_interval);
        returns those this worker had not heard of ending before."""
        now = self._clock()
        if now - self._last_poll < self.poll_interval:
            return set()
        try:
            ended = self.ledger.ended_since(self._last_poll - CLOCK_SKEW)
        except StoreUnavailable:
            return set()
        self._last_poll = now
        news = {job_id for job_id, state in ended.items() if self._known.get(job_id) != state}
        for job_id in news:
            self._remember(job_id, ended[job_id])
        return news

    def ended(self, job_id: str) -> bool:
        """Whether the job was cancelled or deleted (as of the last poll)."""
        return self._known.get(job_id, "active") != "active"

    def _remember(self, job_id: str, state: JobState) -> None:
        self._known[job_id] = state
        self._known.move_to_end(job_id)
        if len(self._known) > CACHE_SIZE:
            self._known.popitem(last=False)
