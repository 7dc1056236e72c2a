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
import threading
import time
from collections.abc import Callable
from typing import Any

from docqueue.config import Settings
from docqueue.protocol import BatchMessage
from docqueue.worker.admission import Admission
from docqueue.worker.batcher import Buffer
from docqueue.worker.compute import BatchRunner
from docqueue.worker.delivery import Delivery, LocalDelivery
from docqueue.worker.groups import Groups
from docqueue.worker.runners import Runner
from docqueue.worker.store import ResultStore
from docqueue.worker.work import Computed, GroupKey, Rejected, WorkItem
from docqueue.worker.writer import LaneQueue, Writer

log = logging.getLogger(__name__)

#: Bulk delivery bytes admitted per intake round (interactive ones always go first).
INTAKE_ROUND_BYTES = 256 * 1024


class Engine:
    def __init__(
        self,
        *,
        runners: dict[str, dict[str, Runner]],
        settings: Settings,
        store: ResultStore,
        worker_id: str,
        notify: Callable[[set[str]], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.buffer: Buffer[GroupKey, WorkItem] = Buffer(settings.max_wait_ms / 1000.0)
        groups = Groups()
        self._stop = threading.Event()
        self.admission = Admission(runners, settings, groups, worker_id)
        self.batches = BatchRunner(runners, groups, self.buffer, settings.max_attempts)
        self.writer = Writer(runners, groups, store, worker_id, self._stop, notify)
        self._bulk: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._interactive: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._arrived = threading.Event()
        self._written = LaneQueue(maxsize=4)
        self._threads: list[threading.Thread] = []
        #: Deliveries not yet opened plus documents without a committed row.
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
        self.buffer.wake()
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
            while deliveries := self._next_deliveries():
                try:
                    self._admit(deliveries)
                except Exception:  # a bug here must not kill the thread
                    log.exception(
                        "intake failed on %d messages; they stay unacked", len(deliveries)
                    )

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
        """Every waiting interactive delivery, then bulk ones up to a round's worth,
        so a single document never queues behind a long tokenizing round."""
        taken: list[Delivery] = []
        while True:
            try:
                taken.append(self._interactive.get_nowait())
            except queue.Empty:
                break
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
        # Counted before anything is handed on, so in_flight never reads 0 early.
        self._add_in_flight(admitted.documents - len(deliveries))
        for key, shape, items in admitted.work:
            self.buffer.add(key, shape, items, interactive=key[0] == "interactive")
        if admitted.rejected:
            self._written.put(Rejected(admitted.rejected), urgent=True)

    def _compute(self, key: GroupKey, items: list[WorkItem]) -> None:
        urgent = key[0] == "interactive"
        try:
            for computed in self.batches.run(key, items):
                self._written.put(computed, urgent)
        except Exception:  # a bug here must not kill the thread
            log.exception("batch of %d documents failed unexpectedly", len(items))
            self._written.put(Computed(key, items, error="internal error in the worker"), urgent)
