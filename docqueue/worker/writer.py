"""The writer: batches' outputs into result rows, rows into the store, then acks.

A delivery is acked only after all its documents' rows are committed.  While the
store is away the writer retries with backoff and holds on to its rows; its queue
fills, the compute thread stops taking bulk batches, and the worker stops taking
messages.  After each commit, waiting clients are woken (``notify``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from docqueue.db.results import ResultRow
from docqueue.errors import one_line
from docqueue.logs import jobs_extra
from docqueue.worker.cohorts import Cohorts
from docqueue.worker.delivery import Delivery, ack
from docqueue.worker.metrics import WorkerMetrics
from docqueue.worker.reuse import reuse_key
from docqueue.worker.runners import Runner
from docqueue.worker.store import ResultStore, StoreUnavailable
from docqueue.worker.work import Computed, Dropped, Envelope, Rejected, error_row

log = logging.getLogger(__name__)

Entry = Computed | Rejected | Dropped


class LaneQueue:
    """The writer's queue: interactive entries first; bulk entries block the producer
    once ``maxsize`` are waiting (that back-pressure is what stops the worker taking
    messages while the database is away), interactive ones never do."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._urgent: list[Entry] = []
        self._bulk: list[Entry] = []
        self._cond = threading.Condition()

    def put(self, entry: Entry, urgent: bool) -> None:
        with self._cond:
            if not urgent:
                while len(self._bulk) >= self.maxsize:
                    self._cond.wait()
            (self._urgent if urgent else self._bulk).append(entry)
            self._cond.notify_all()

    def has_room(self) -> bool:
        """Whether a bulk entry can be put without waiting."""
        with self._cond:
            return len(self._bulk) < self.maxsize

    def take(self, timeout: float) -> list[Entry]:
        """Entries of one lane: every waiting urgent one (committed together), else one
        bulk entry -- a batch is a fair transaction, and an urgent entry never waits
        behind more than one.  [] after ``timeout`` with none."""
        with self._cond:
            if not (self._urgent or self._bulk):
                self._cond.wait(timeout)
            if self._urgent:
                taken, self._urgent = self._urgent, []
            else:
                taken = self._bulk[:1]
                del self._bulk[:1]
            self._cond.notify_all()
            return taken


class Writer:
    def __init__(
        self,
        runners: dict[str, dict[str, Runner]],
        cohorts: Cohorts,
        store: ResultStore,
        worker_id: str,
        stopping: threading.Event,
        metrics: WorkerMetrics,
        notify: Callable[[set[str]], Any] | None = None,
    ) -> None:
        self.runners = runners
        self.metrics = metrics
        self.cohorts = cohorts
        self.store = store
        self.worker_id = worker_id
        self.stopping = stopping
        #: Called with the ids of jobs that just had rows committed (wakes waiters).
        self.notify = notify
        self.documents_done = 0
        self.acks = Acks()

    def write(self, entries: Sequence[Entry]) -> int:
        """Store the entries' rows, settle their cohorts, ack the deliveries they
        complete.  Returns the number of documents settled (0 when stopping first)."""
        rows: list[tuple[ResultRow, Envelope]] = []
        dropped: list[Envelope] = []
        for entry in entries:
            if isinstance(entry, Rejected):
                rows.extend(entry.rows)
            elif isinstance(entry, Dropped):
                dropped.extend(i.envelope for i in entry.items)
            else:
                rows.extend(self._rows(entry))
        if rows and not self._commit([row for row, _ in rows]):
            return 0
        for entry in entries:
            if not isinstance(entry, Rejected):
                self.cohorts.settle(entry.key, len(entry.items))
        finished: list[Delivery] = []
        for envelope in [e for _, e in rows] + dropped:
            envelope.remaining -= 1
            if envelope.remaining == 0:
                finished.append(envelope.delivery)
        self.acks.ack(finished)
        self.documents_done += len(rows)
        self.metrics.settled(_tally(rows, entries))
        self._notify({row.job_id for row, _ in rows})
        return len(rows) + len(dropped)

    def _rows(self, computed: Computed) -> list[tuple[ResultRow, Envelope]]:
        items = computed.items
        if computed.error is not None:
            return [
                (
                    error_row(
                        i.envelope,
                        i.seq,
                        computed.error,
                        self.worker_id,
                        attempts=max(1, i.failures),
                        truncated=i.features.truncated,
                    ),
                    i.envelope,
                )
                for i in items
            ]
        _, model, task, _ = computed.key
        runner = self.runners[model][task]
        computed_jobs = (i.job for i in items)
        rkey = reuse_key(runner, computed.key)
        try:
            if computed.ready is not None:
                computed.ready.synchronize()
            outputs = runner.postprocess(
                computed.raw, [i.features for i in items], self.cohorts.params(computed.key)
            )
        except Exception as exc:
            log.exception(
                "postprocess failed for a batch of %d", len(items), extra=jobs_extra(computed_jobs)
            )
            error = f"postprocess failed: {one_line(exc)}"
            return [
                (error_row(i.envelope, i.seq, error, self.worker_id), i.envelope) for i in items
            ]
        return [
            (
                ResultRow(
                    job_id=i.job,
                    seq=i.seq,
                    ok=True,
                    output=out.output,
                    embedding=out.embedding,
                    truncated=i.features.truncated,
                    worker_id=self.worker_id,
                    batch_size=len(items),
                    enqueued_at=i.envelope.enqueued_at,
                    started_at=computed.started_at,
                    finished_at=computed.finished_at,
                    task=task,
                    fingerprint=None if rkey is None else rkey.fingerprint,
                    params_digest=None if rkey is None else rkey.params_digest,
                    text_hash=i.text_hash,
                ),
                i.envelope,
            )
            for i, out in zip(items, outputs, strict=True)
        ]

    def _commit(self, rows: list[ResultRow]) -> bool:
        """Store the rows, retrying while the database is unreachable.  False only
        when stopping before it came back (the messages then stay unacked)."""
        delay = 0.2
        outage_logged = False
        while True:
            try:
                self.store.commit(rows)
            except StoreUnavailable as exc:
                if not outage_logged:
                    log.warning(
                        "database unavailable (%s); holding %d results, retrying", exc, len(rows)
                    )
                    outage_logged = True
                if self.stopping.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
                continue
            if outage_logged:
                log.warning("database reachable again; %d results committed", len(rows))
            return True

    def _notify(self, jobs: set[str]) -> None:
        if self.notify is None:
            return
        try:
            self.notify(jobs)
        except Exception as exc:  # waiting clients fall back to polling SQL
            log.debug("could not publish completions: %s", exc)


class Acks:
    """Acks, owed until the broker takes them.  When Redis is away (restarted, cut
    off), the messages whose rows are committed stay owed and are acked once it
    answers again, in one round trip, instead of being computed again after the
    visibility timeout.  Tried again at most every ``delay`` seconds (doubling up
    to ``max_delay``), on the writer's thread: with each write, and when idle."""

    def __init__(self, delay: float = 0.5, max_delay: float = 10.0) -> None:
        self.first_delay, self.max_delay = delay, max_delay
        self.delay = delay
        self.owed: list[Delivery] = []
        self._next_try = 0.0

    def ack(self, finished: list[Delivery]) -> None:
        self.owed.extend(finished)
        if self.owed and time.monotonic() >= self._next_try:
            self._try()

    def retry(self) -> None:
        """Ack what is owed, if it is time to try again."""
        self.ack([])

    def _try(self) -> None:
        try:
            ack(self.owed)
        except Exception as exc:
            if self.delay == self.first_delay:
                log.warning(
                    "could not ack %d messages (%s); their rows are committed: acking them "
                    "once Redis answers",
                    len(self.owed),
                    one_line(exc),
                )
            self._next_try = time.monotonic() + self.delay
            self.delay = min(self.delay * 2, self.max_delay)
            return
        if self.delay != self.first_delay:
            log.warning("Redis answers again: %d owed messages acked", len(self.owed))
        self.owed = []
        self.delay = self.first_delay


def _tally(
    rows: list[tuple[ResultRow, Envelope]], entries: Sequence[Entry]
) -> Counter[tuple[str, str, str]]:
    """Documents settled by (model, task, status): rows are done or failed, dropped
    documents cancelled."""
    tally: Counter[tuple[str, str, str]] = Counter(
        (envelope.model, envelope.task, "done" if row.ok else "failed") for row, envelope in rows
    )
    for entry in entries:
        if isinstance(entry, Dropped):
            _, model, task, _ = entry.key
            tally[(model, task, "cancelled")] += len(entry.items)
    return tally
