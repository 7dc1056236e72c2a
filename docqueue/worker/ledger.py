"""What a worker asks the ledger before it computes anything: does the job of a
message exist in this worker's database, was it cancelled or deleted, and does
the message agree with it?

A worker must never ack a message it cannot record: a job its database does not
hold (a worker pointed at another database, or a message that came before its
job) goes back to the queue for a worker that has it.  A cancelled or deleted
job's documents are dropped without being computed.  And a message may only
write the results of the documents it names: its task, model, parameters and lane
must be its job's, and each document must be the one SQL holds under that
sequence number (compared by digest, :func:`docqueue.protocol.document_digest`).

The answers are cached (jobs are looked up once, then only the jobs that ended
since the last poll are read), and the documents of a whole intake round are read
in one query, so the checks cost a query or two per intake round, not one per
document.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from docqueue.db import Database, DatabaseError, intake
from docqueue.db.reuse import Reusable, ReuseKey, find_reusable
from docqueue.errors import one_line
from docqueue.params import InvalidParams, validate_params
from docqueue.protocol import (
    BatchMessage,
    Document,
    document_digest,
    params_key,
    stored_document,
)
from docqueue.worker.store import StoreUnavailable

JobState = Literal["active", "cancelled", "deleted"]
#: (job, sequence number)
DocumentKey = tuple[str, int]

#: Jobs remembered per state (LRU): one single-document job per backend request adds up.
CACHE_SIZE = 100_000
#: The ledger's clock is the producers': jobs ended this long before the last poll
#: are read again, so clock skew between machines cannot hide a cancellation.
CLOCK_SKEW = 60.0


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What the ledger says of a job: its state and, when it says (``task`` is not
    None), what every message of the job must say too."""

    state: JobState
    task: str | None = None
    model: str | None = None
    #: The job's parameters in canonical form (:func:`canonical_params`).
    params: str | None = None
    lane: str | None = None
    #: The job copies earlier results of the same text, task, model and parameters.
    reuse: bool = False

    def disagreement(self, batch: BatchMessage) -> str | None:
        """Why ``batch`` cannot be a message of this job, or None."""
        if self.task is None:
            return None
        said = []
        for name, ours, theirs in (
            ("task", self.task, batch.task),
            ("model", self.model, batch.model),
            ("lane", self.lane, batch.lane),
        ):
            if ours != theirs:
                said.append(f"{name} {theirs} (the job's: {ours})")
        # parameters are a task's: another task's cannot be compared, and already disagrees
        if batch.task == self.task and self.params is not None:
            theirs = canonical_params(batch.task, batch.params)
            if theirs != self.params:
                said.append(f"params {theirs} (the job's: {self.params})")
        if not said:
            return None
        return f"job {batch.job}: the message disagrees with the ledger: {', '.join(said)}"


def canonical_params(task: str, params: dict[str, Any]) -> str:
    """Parameters as validated (defaults filled in) in canonical form, so that a
    message leaving out a default agrees with its job; parameters that do not
    validate are compared as given (the worker refuses them later, per document)."""
    try:
        return params_key(validate_params(task, params))
    except InvalidParams:
        return params_key(params)


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document as the ledger holds it: its digest, or (rows written before
    digests existed) its text."""

    digest: str | None
    text: str | None = None
    chat: bool = False

    def matches(self, doc: Document) -> bool:
        if self.digest is not None:
            return document_digest(doc) == self.digest
        if self.text is None:
            return False
        try:
            held = stored_document(self.text, self.chat)
        except (ValueError, TypeError):  # a chat that no longer parses matches nothing
            return False
        return document_digest(held) == document_digest(doc)


def document_disagreement(
    batch: BatchMessage, stored: Mapping[DocumentKey, StoredDocument]
) -> str | None:
    """Why the documents of ``batch`` are not its job's, or None."""
    for seq, doc in batch.items:
        held = stored.get((batch.job, seq))
        if held is None:
            return f"job {batch.job} has no document {seq}"
        if not held.matches(doc):
            return f"job {batch.job}, document {seq}: not the text the job holds"
    return None


class Ledger(Protocol):
    def states(self, job_ids: Collection[str]) -> dict[str, JobRecord]:
        """The record of each job the database knows (a deleted one by its
        tombstone); jobs it has never heard of are left out.  Raises
        :class:`StoreUnavailable` when the database is away."""

    def ended_since(self, since: float) -> dict[str, JobState]:
        """Jobs cancelled or deleted at or after ``since`` (epoch seconds)."""

    def documents(
        self, wanted: Mapping[str, Collection[int]]
    ) -> dict[DocumentKey, StoredDocument] | None:
        """The stored form of the wanted documents (job -> sequence numbers); those
        the database does not hold are left out.  None: this ledger holds no
        documents to compare with.  Raises :class:`StoreUnavailable`."""

    def reusable(self, key: ReuseKey, text_hashes: Collection[str]) -> dict[str, Reusable]:
        """Earlier successes to copy, by text hash (:func:`docqueue.db.reuse.find_reusable`).
        Raises :class:`StoreUnavailable`."""


class SqlLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    def states(self, job_ids: Collection[str]) -> dict[str, JobRecord]:
        ids = list(job_ids)
        try:
            with self.db.connect() as conn:
                jobs = intake.jobs(conn, ids)
                missing = set(ids) - {job.id for job in jobs}
                deleted: Iterable[str] = (
                    intake.deleted(conn, missing)
                    if missing  # a tombstone is looked for only when the job is not there
                    else ()
                )
                found = dict.fromkeys(deleted, JobRecord("deleted"))
        except DatabaseError as exc:
            raise StoreUnavailable(one_line(exc)) from exc
        for job in jobs:
            # interned: up to CACHE_SIZE records are kept, mostly with the same values
            found[job.id] = JobRecord(
                "active" if job.cancelled_at is None else "cancelled",
                task=sys.intern(job.task),
                model=sys.intern(job.model),
                params=sys.intern(canonical_params(job.task, job.params or {})),
                lane=sys.intern(job.lane),
                reuse=bool(job.reuse),
            )
        return found

    def ended_since(self, since: float) -> dict[str, JobState]:
        try:
            with self.db.connect() as conn:
                ended: dict[str, JobState] = {**intake.ended_since(conn, since)}
                return ended
        except DatabaseError as exc:
            raise StoreUnavailable(one_line(exc)) from exc

    def documents(
        self, wanted: Mapping[str, Collection[int]]
    ) -> dict[DocumentKey, StoredDocument] | None:
        try:
            with self.db.connect() as conn:
                rows = intake.documents(conn, wanted)
        except DatabaseError as exc:
            raise StoreUnavailable(one_line(exc)) from exc
        return {
            (job, seq): StoredDocument(digest, text, chat) for job, seq, digest, text, chat in rows
        }

    def reusable(self, key: ReuseKey, text_hashes: Collection[str]) -> dict[str, Reusable]:
        try:
            with self.db.connect() as conn:
                return find_reusable(conn, key, text_hashes)
        except DatabaseError as exc:
            raise StoreUnavailable(one_line(exc)) from exc


class OpenLedger:
    """Every job is active and every message agrees: the engine run offline has no
    ledger to ask."""

    def states(self, job_ids: Collection[str]) -> dict[str, JobRecord]:
        return dict.fromkeys(job_ids, JobRecord("active"))

    def ended_since(self, since: float) -> dict[str, JobState]:
        return {}

    def documents(
        self, wanted: Mapping[str, Collection[int]]
    ) -> dict[DocumentKey, StoredDocument] | None:
        return None

    def reusable(self, key: ReuseKey, text_hashes: Collection[str]) -> dict[str, Reusable]:
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
        self._known: OrderedDict[str, JobRecord] = OrderedDict()
        self._last_poll = clock()

    def lookup(self, job_ids: Collection[str]) -> dict[str, JobRecord | None]:
        """Each job's record; None for a job the database does not hold.  Jobs not
        yet known are read in one query.  Raises :class:`StoreUnavailable` when
        the database is away and a job is not known yet."""
        missing = [j for j in set(job_ids) if j not in self._known]
        if missing:
            for job_id, record in self.ledger.states(missing).items():
                self._remember(job_id, record)
        return {job_id: self._known.get(job_id) for job_id in job_ids}

    def documents(
        self, wanted: Mapping[str, Collection[int]]
    ) -> dict[DocumentKey, StoredDocument] | None:
        """The stored form of the wanted documents (one query; see
        :meth:`Ledger.documents`).  Raises :class:`StoreUnavailable`."""
        return self.ledger.documents(wanted) if wanted else {}

    def reusable(self, key: ReuseKey, text_hashes: Collection[str]) -> dict[str, Reusable]:
        """Earlier successes to copy, by text hash (:meth:`Ledger.reusable`).
        Raises :class:`StoreUnavailable`."""
        return self.ledger.reusable(key, text_hashes) if text_hashes else {}

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
        news = {job_id for job_id, state in ended.items() if self._state(job_id) != state}
        for job_id in news:
            known = self._known.get(job_id)
            state = ended[job_id]
            self._remember(
                job_id, JobRecord(state) if known is None else replace(known, state=state)
            )
        return news

    def ended(self, job_id: str) -> bool:
        """Whether the job was cancelled or deleted (as of the last poll)."""
        return self._state(job_id) not in (None, "active")

    def _state(self, job_id: str) -> JobState | None:
        known = self._known.get(job_id)
        return None if known is None else known.state

    def _remember(self, job_id: str, record: JobRecord) -> None:
        self._known[job_id] = record
        self._known.move_to_end(job_id)
        if len(self._known) > CACHE_SIZE:
            self._known.popitem(last=False)
