"""The worker's heartbeat: a row in SQL saying it is alive, what it serves and how
much it has done, refreshed every ``heartbeat_interval`` seconds.

``docqueue status`` and the Client read it to tell whether a live worker serves a
model.  A database outage only pauses it; the worker keeps serving.  It also logs a
line at INFO every ``log_interval`` seconds while the worker works: documents per
second, documents per batch and padded tokens per second.

With each beat it closes as failed the jobs whose producer stopped before all their
documents were in (:func:`docqueue.db.leases.close_lapsed`).  Workers do it because
they are what always runs: a job's documents need a worker to be computed, so
wherever a job can be left half-made a worker runs, while the API, beat and
``docqueue prune`` are optional (one of two workers racing to close a job wins; the
other writes nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from docqueue.config import Settings
from docqueue.db import Database, leases
from docqueue.db.workers import beat
from docqueue.errors import one_line
from docqueue.humanize import per_second
from docqueue.logs import jobs_extra
from docqueue.worker.engine import Engine
from docqueue.worker.memory import peak_gpu_bytes, peak_host_bytes

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(
        self, engine: Engine, db: Database, settings: Settings, info: dict[str, Any]
    ) -> None:
        super().__init__(name="docqueue-heartbeat", daemon=True)
        self.engine = engine
        self.db = db
        self.interval = settings.heartbeat_interval
        #: What the row says about the worker (id, host, pid, device, models, start).
        self.info = info
        self.stopping = threading.Event()
        self.throughput = Throughput(settings.log_interval)

    def run(self) -> None:
        failing = False
        while True:
            stopping = self.stopping.is_set()
            self.throughput.report(self.engine)
            try:
                self.beat(stopping)
                self.close_lapsed()
                failing = False
            except Exception as exc:  # the database may be away; keep serving
                if not failing:
                    log.warning("heartbeat failed: %s", one_line(exc))
                failing = True
            if stopping:
                return
            self.stopping.wait(self.interval)

    def beat(self, stopped: bool = False) -> None:
        with self.db.begin() as conn:
            beat(
                conn,
                documents=self.engine.documents_done,
                stopped=stopped,
                stats=self.stats(),
                **self.info,
            )

    def close_lapsed(self) -> None:
        """Close the jobs whose producer's hold lapsed before they were complete."""
        now = time.time()
        with self.db.connect() as conn:
            lapsed = leases.lapsed(conn, now)
        for job_id in lapsed:
            with self.db.begin() as conn:
                reason = leases.close_lapsed(conn, job_id, now)
            if reason is not None:
                log.warning("job %s failed: %s", job_id, reason, extra=jobs_extra([job_id]))

    def stats(self) -> dict[str, int | None]:
        return {
            "batches": self.engine.batches_run,
            "padded_tokens": self.engine.padded_tokens,
            "peak_host_bytes": peak_host_bytes(),
            "peak_gpu_bytes": peak_gpu_bytes(),
        }

    def stop(self) -> None:
        """Write a last beat saying the worker stopped, and end."""
        self.stopping.set()
        self.join(timeout=5)


@dataclass
class _Counters:
    at: float
    documents: int
    batches: int
    padded_tokens: int


class Throughput:
    """The worker's one line of progress at INFO, every ``interval`` seconds it
    worked: what it did since the last line."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: _Counters | None = None

    def report(self, engine: Engine, now: float | None = None) -> str | None:
        """Log (and return) the line when one is due; None otherwise."""
        current = _Counters(
            time.monotonic() if now is None else now,
            engine.documents_done,
            engine.batches_run,
            engine.padded_tokens,
        )
        last = self._last
        if last is None:
            self._last = current
            return None
        seconds = current.at - last.at
        if seconds < self.interval:
            return None
        self._last = current
        documents = current.documents - last.documents
        if documents == 0:
            return None
        batches = current.batches - last.batches
        rate = per_second(documents / seconds)
        line = (
            f"{documents:,} documents in {seconds:.0f}s ({rate} docs/s), "
            f"{batches:,} batches of {documents / max(batches, 1):,.1f} documents on average, "
            f"{(current.padded_tokens - last.padded_tokens) / seconds:,.0f} padded tokens/s"
        )
        log.info("%s", line)
        return line
