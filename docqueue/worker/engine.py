"""The worker's pipeline: deliveries in, batches through the model, rows into the
store, acks back.

Three threads, joined by bounded hand-offs, so tokenizing and writing overlap the
model's work:

* **intake** opens deliveries and admits their documents (:mod:`.admission`:
  checked against this worker's limits, tokenized many at once) into the buffer;
* **compute** takes batches as the flush policy says (:mod:`.batcher`) and runs
  them (:mod:`.compute`: out-of-memory halving, isolation of a failing document);
* **writer** turns outputs into rows, commits them and acks the deliveries they
  complete (:mod:`.writer`).  Interactive work goes first at every step.

The engine sees work only as :class:`~docqueue.worker.delivery.Delivery` objects,
so the same engine runs under Celery (kombu messages) and offline
(:meth:`Engine.submit`, which the benchmark compares the queue against).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from docqueue.config import Settings
from docqueue.errors import one_line
from docqueue.humanize import plural
from docqueue.logs import jobs_extra
from docqueue.protocol import BatchMessage
from docqueue.worker.admission import Admission
from docqueue.worker.batcher import Buffer
from docqueue.worker.cohorts import Cohorts
from docqueue.worker.compute import BatchRunner
from docqueue.worker.delivery import Delivery, LocalDelivery
from docqueue.worker.holding import HoldLimit
from docqueue.worker.ledger import JobStates, Ledger, OpenLedger
from docqueue.worker.metrics import WorkerMetrics
from docqueue.worker.runners import Runner
from docqueue.worker.store import ResultStore
from docqueue.worker.work import CohortKey, Computed, Dropped, Rejected, WorkItem
from docqueue.worker.writer import LaneQueue, Writer

log = logging.getLogger(__name__)

#: Bulk delivery bytes admitted per intake round.  An interactive delivery arriving
#: during a round waits for it to end, so a round is kept short: 64 KiB is about 90
#: documents of 700 characters, 20-70 ms of tokenizing on a busy 2-core machine
#: (256 KiB rounds put 100-180 ms in front of a single document).
INTAKE_ROUND_BYTES = 64 * 1024
#: A delivery whose job this worker's database lacks goes back to the queue after
#: this many seconds, doubling per return of the same message (or, where returns
#: cannot be counted, of the same job) up to MAX_RETURN_DELAY; after
#: ``max_returns`` returns it becomes a dead letter.
FIRST_RETURN_DELAY, MAX_RETURN_DELAY = 0.5, 5.0
#: Jobs whose returns are remembered (for their delay, and to log each once).
RETURNS_REMEMBERED = 10_000


class Engine:
    def __init__(
        self,
        *,
        runners: dict[str, dict[str, Runner]],
        settings: Settings,
        store: ResultStore,
        worker_id: str,
        notify: Callable[[set[str]], Any] | None = None,
        ledger: Ledger | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        #: What this worker did, for Prometheus (served only when a port is set).
        self.metrics = metrics or WorkerMetrics().identify({m: list(t) for m, t in runners.items()})
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.buffer: Buffer[CohortKey, WorkItem] = Buffer(settings.max_wait_ms / 1000.0)
        cohorts = Cohorts()
        self._stop = threading.Event()
        #: What the ledger says of the jobs this worker has work for.
        self.jobs = JobStates(ledger or OpenLedger())
        self.admission = Admission(runners, settings, cohorts, worker_id, self.jobs)
        #: How many bulk messages this worker may hold: what it can finish soon.
        self.hold = HoldLimit(settings)
        self.batches = BatchRunner(
            runners, cohorts, self.buffer, settings.max_attempts, self.metrics
        )
        self.writer = Writer(runners, cohorts, store, worker_id, self._stop, self.metrics, notify)
        self._bulk: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._interactive: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._arrived = threading.Event()
        self._written = LaneQueue(maxsize=4)
        self._threads: list[threading.Thread] = []
        #: Deliveries of jobs this worker's database lacks, until they go back: (due, delivery).
        self._parked: list[tuple[float, Delivery]] = []
        self._returns: OrderedDict[str, int] = OrderedDict()
        self._draining = False
        #: The next intake round is bulk's (rounds take turns while both wait).
        self._bulk_turn = False
        #: Deliveries not yet admitted (or parked) plus documents without a committed row.
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        for name, loop in (
            ("intake", self._intake_loop),
            ("compute", self._compute_loop),
            ("writer", self._writer_loop),
        ):
            thread = threading.Thread(target=loop, name=f"docqueue-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def receive(self, delivery: Delivery) -> None:
        """Hand over a delivery and return at once (called on the consumer's thread)."""
        self._add_in_flight(1)
        (self._interactive if delivery.interactive else self._bulk).put(delivery)
        self._arrived.set()

    def submit(self, batch: BatchMessage) -> None:
        """Offline: documents straight in, no message to decode or ack."""
        self.receive(LocalDelivery(batch))

    def drain(self, grace: float) -> bool:
        """Flush everything buffered now; wait up to ``grace`` seconds for it to be
        committed and acked.  True when nothing is left in flight."""
        self.buffer.flush_all = True
        self._draining = True
        self.buffer.wake()
        self._arrived.set()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.in_flight == 0:
                return True
            time.sleep(0.02)
        log.warning(
            "shutdown: %d messages/documents still in flight after %.0fs; their messages stay "
            "unacked and go back to the queue",
            self.in_flight,
            grace,
        )
        return False

    def stop(self) -> None:
        self._stop.set()
        self.buffer.wake()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _add_in_flight(self, n: int) -> None:
        with self._in_flight_lock:
            self._in_flight += n

    # --- counters (the heartbeat reports them) -----------------------------------

    @property
    def documents_done(self) -> int:
        return self.writer.documents_done

    @property
    def batches_run(self) -> int:
        return self.batches.batches_run

    @property
    def padded_tokens(self) -> int:
        return self.batches.padded_tokens

    # --- the three loops -------------------------------------------------------------

    def _intake_loop(self) -> None:
        while not self._stop.is_set():
            self._arrived.wait(0.1)
            self._arrived.clear()
            self._drop_ended(self.jobs.poll())
            self._return_parked()
            while deliveries := self._next_deliveries():
                try:
                    self._admit(deliveries)
                except Exception:  # a bug here must not kill the thread
                    log.exception(
                        "intake failed on %d messages; they stay unacked", len(deliveries)
                    )
                # polled at most once a second: a busy intake still hears of cancels
                self._drop_ended(self.jobs.poll())
                self._return_parked()

    def _compute_loop(self) -> None:
        import torch

        with torch.inference_mode():  # grad mode is per thread: set it where forward runs
            while not self._stop.is_set():
                # While the writer is behind, a bulk batch would wait to be handed over;
                # meanwhile only interactive documents are computed.
                backed_up = not self._written.has_room()
                taken = self.buffer.take(0.05 if backed_up else 0.2, interactive_only=backed_up)
                if taken is not None:
                    key, items = taken
                    self._compute(key, items)

    def _writer_loop(self) -> None:
        while not self._stop.is_set():
            entries = self._written.take(timeout=0.1)
            if not entries:
                self.writer.acks.retry()
                continue
            try:
                written = self.writer.write(entries)
            except Exception:  # a bug here must not kill the thread
                log.exception(
                    "writing %d batches failed; their messages stay unacked", len(entries)
                )
                continue
            self._add_in_flight(-written)

    # --- one step of each --------------------------------------------------------------

    def _next_deliveries(self) -> list[Delivery]:
        """Interactive and bulk rounds take turns.  An interactive round takes every
        waiting interactive delivery and nothing else (admitted with bulk ones, a
        single document would wait for their tokenizing); a bulk round takes bulk
        ones up to INTAKE_ROUND_BYTES.  Taking turns, a steady stream of single
        documents cannot starve bulk work, and a single document waits for one
        short bulk round at most."""
        if self._bulk_turn:
            self._bulk_turn = False
            if bulk := self._bulk_round():
                return bulk
        interactive: list[Delivery] = []
        while True:
            try:
                interactive.append(self._interactive.get_nowait())
            except queue.Empty:
                break
        if interactive:
            self._bulk_turn = True
            return interactive
        return self._bulk_round()

    def _bulk_round(self) -> list[Delivery]:
        taken: list[Delivery] = []
        size = 0
        while size < INTAKE_ROUND_BYTES:
            try:
                delivery = self._bulk.get_nowait()
            except queue.Empty:
                break
            taken.append(delivery)
            size += delivery.size
        return taken

    def _admit(self, deliveries: list[Delivery]) -> None:
        admitted = self.admission.admit(deliveries)
        for documents in admitted.bulk_sizes:
            self.hold.received(documents)
        parked = sum(len(held) for held in admitted.unknown.values())
        # Counted before anything is handed on, so in_flight never reads 0 early.
        self._add_in_flight(admitted.documents - len(deliveries) + parked)
        for job, held in admitted.unknown.items():
            self._add_in_flight(-self._park(job, held))
        for key, shape, items in admitted.work:
            self.buffer.add(key, shape, items, interactive=key[0] == "interactive")
        if admitted.rejected:
            self._written.put(Rejected(admitted.rejected), urgent=True)

    def _compute(self, key: CohortKey, items: list[WorkItem]) -> None:
        urgent = key[0] == "interactive"
        ended = [i for i in items if self.jobs.ended(i.job)]
        if ended:  # cancelled or deleted while they waited: not computed
            self._written.put(Dropped(key, ended), urgent)
            items = [i for i in items if not self.jobs.ended(i.job)]
            if not items:
                return
        try:
            for computed in self.batches.run(key, items):
                if computed.error is None:
                    self.hold.computed(
                        len(computed.items), computed.finished_at - computed.started_at
                    )
                self._written.put(computed, urgent)
        except Exception:  # a bug here must not kill the thread
            log.exception(
                "batch of %d documents failed unexpectedly",
                len(items),
                extra=jobs_extra(i.job for i in items),
            )
            self._written.put(Computed(key, items, error="internal error in the worker"), urgent)

    def _drop_ended(self, jobs: set[str]) -> None:
        """Documents of jobs just cancelled or deleted leave the buffer uncomputed."""
        if not jobs:
            return
        for key, items in self.buffer.remove(lambda item: item.job in jobs):
            log.info(
                "dropping %d documents of cancelled or deleted jobs",
                len(items),
                extra=jobs_extra(i.job for i in items),
            )
            self._written.put(Dropped(key, items), urgent=True)

    # --- deliveries of jobs this worker's database does not hold -----------------------

    def _park(self, job: str, deliveries: list[Delivery]) -> int:
        """Hold them for a while, then give them back to the queue: a worker whose
        database has the job will take them (a worker never acks what it cannot
        record).  Said once per job, loudly.  One returned ``max_returns`` times
        already becomes a dead letter instead; returns how many did."""
        returns = self._returns.pop(job, 0)
        self._returns[job] = returns + 1
        if len(self._returns) > RETURNS_REMEMBERED:
            self._returns.popitem(last=False)
        if returns == 0:
            log.error(
                "job %s is not in this worker's database: its messages go back to the queue "
                "for a worker that has it (do this worker and the producers use the same "
                "DOCQUEUE_DATABASE_URL?)",
                job,
                extra=jobs_extra([job]),
            )
        set_aside = 0
        for delivery in deliveries:
            count = delivery.count_return()
            if count is not None and count > self.settings.max_returns:
                delivery.reject(
                    f"job {job} is not in this worker's database, and no worker that has "
                    f"it took the message in {count - 1} returns to the queue (do the "
                    "workers and the producers use the same DOCQUEUE_DATABASE_URL? once "
                    "one does, replay it with docqueue dead-letters replay)"
                )
                set_aside += 1
                continue
            earlier = returns if count is None else count - 1
            # Jittered, so that its return does not always meet this worker's own next
            # poll first (a worker polls again right after a delivery, in step with its
            # returns).
            delay = min(MAX_RETURN_DELAY, FIRST_RETURN_DELAY * 2 ** min(earlier, 16))
            due = time.monotonic() + delay * random.uniform(0.5, 1.5)
            self._parked.append((due, delivery))
        return set_aside

    def _return_parked(self) -> None:
        if not self._parked:
            return
        now = time.monotonic()
        due = [d for when, d in self._parked if when <= now or self._draining]
        self._parked = [(when, d) for when, d in self._parked if when > now and not self._draining]
        if due:
            log.info("returning %s to the queue", plural(len(due), "message"))
        for delivery in due:
            try:
                delivery.retry()
            except Exception as exc:  # the broker is away: it comes back by itself later
                log.warning("could not return a message to the queue: %s", one_line(exc))
        self._add_in_flight(-len(due))
