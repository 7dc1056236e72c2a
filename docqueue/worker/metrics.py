"""A worker process's Prometheus metrics: what it computed, in what batches, how
long documents waited, and its GPU's memory.

Named as vLLM, TEI and Triton users expect: the ``docqueue_`` prefix, the unit in
the name, ``_total`` counters and ``_seconds`` histograms.  Each process has its
own registry, served on its own port (``DOCQUEUE_METRICS_PORT``; ``docqueue worker
--gpus`` gives the Nth process that port + N) when the operator asks for one.
What every worker shares (queue depth, dead letters, live workers) is not here:
the API exports it once, read from Redis and SQL (:mod:`docqueue.api.metrics`).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from docqueue.errors import Unavailable
from docqueue.worker.work import CohortKey, WorkItem

log = logging.getLogger(__name__)

#: Documents per batch: powers of two up to the largest max_batch_rows.
SIZE_BUCKETS = tuple(float(2**i) for i in range(13))
#: Padded tokens per batch (rows x longest input): 16 to 1M.
TOKEN_BUCKETS = tuple(float(2**i) for i in range(4, 21))
#: Seconds a batch's forward took: a micro model on a CPU to a long generation.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Seconds a document waited from enqueue to its batch's start: an interactive
#: document's milliseconds to a bulk backlog's hours.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: The label a (model, task) this worker does not serve is counted under: labels
#: come from this worker's configuration, never from what a message says.
OTHER = "other"


class WorkerMetrics:
    """The metrics, ready to be served before the models load (so that a port in
    use is said at once); :meth:`identify` adds what the loaded models tell."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series beside every counter
        self.registry = CollectorRegistry()
        self._served: set[tuple[str, str]] = set()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds
        self.info = Info("docqueue_worker", "This worker process", registry=self.registry)
        self.documents = Counter(
            "docqueue_documents",
            "Documents this worker settled, by task, model and status (done: a result "
            "row; failed: an error row; cancelled: taken out of the buffer unrun, its job "
            "cancelled or deleted)",
            ["task", "model", "status"],
            registry=self.registry,
        )
        self.batch_size = self._histogram(
            "docqueue_batch_size", "Documents per batch", SIZE_BUCKETS
        )
        self.padded_tokens = self._histogram(
            "docqueue_batch_padded_tokens",
            "Padded tokens per batch (documents x longest input)",
            TOKEN_BUCKETS,
        )
        self.duration = self._histogram(
            "docqueue_batch_duration_seconds",
            "Seconds a batch's forward took (on a GPU: until its output was queued for "
            "copying to the host)",
            DURATION_BUCKETS,
        )
        self.queue_wait = self._histogram(
            "docqueue_queue_wait_seconds",
            "Seconds from a document's enqueue (the producer's clock) to the start of its batch",
            WAIT_BUCKETS,
            lane=True,
        )
        self.in_flight = Gauge(
            "docqueue_worker_documents_in_flight",
            "Messages and documents this worker holds that have no committed row yet",
            registry=self.registry,
        )
        self._server: Any = None

    def identify(
        self, served: dict[str, Iterable[str]], worker_id: str = "", device: str = "cpu"
    ) -> WorkerMetrics:
        """The (model, task) pairs this worker serves (the only label values it
        uses), its id and its device (whose GPU memory it reports)."""
        self._served = {(model, task) for model, tasks in served.items() for task in tasks}
        self.info.info({"worker_id": worker_id, "device": device})
        GpuMemory(device, registry=self.registry)
        return self

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...], lane: bool = False
    ) -> Histogram:
        labels = ["task", "model"] + (["lane"] if lane else [])
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def _labels(self, model: str, task: str) -> tuple[str, str]:
        return (task, model) if (model, task) in self._served else (OTHER, OTHER)

    def batch_ran(
        self, key: CohortKey, items: list[WorkItem], started: float, finished: float
    ) -> None:
        """A batch the model ran: its size, padded tokens, duration, and how long
        each of its documents waited in the queue."""
        lane, model, task, _ = key
        labels = self._labels(model, task)
        self.batch_size.labels(*labels).observe(len(items))
        self.padded_tokens.labels(*labels).observe(len(items) * max(i.length for i in items))
        self.duration.labels(*labels).observe(max(0.0, finished - started))
        waited = self.queue_wait.labels(*labels, lane)
        for item in items:  # clocks of two machines: never a negative wait
            waited.observe(max(0.0, started - item.envelope.enqueued_at))

    def settled(self, counts: Tally[tuple[str, str, str]]) -> None:
        """Documents settled, by (model, task, status)."""
        for (model, task, status), n in counts.items():
            self.documents.labels(*self._labels(model, task), status).inc(n)

    def serve(self, port: int, host: str) -> None:
        """Serve /metrics on ``host:port`` (in a thread) until :meth:`close`; raises
        OSError when the port cannot be had."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class MetricsUnavailable(Unavailable, RuntimeError):
    """The metrics port cannot be listened on (taken, or an address not here)."""


def serve_metrics(metrics: WorkerMetrics, host: str, port: int) -> None:
    """Serve ``metrics`` on ``host:port``, or say in one line why it cannot be."""
    try:
        metrics.serve(port, host)
    except OSError as exc:
        raise MetricsUnavailable(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): set "
            "DOCQUEUE_METRICS_PORT to a free port (docqueue worker --gpus uses one per GPU "
            "from there up), or leave it unset"
        ) from None
    log.info("metrics on http://%s:%d/metrics", host, port)


class GpuMemory(Collector):
    """torch's allocator on this worker's GPU, read at scrape time: allocated,
    reserved and peak allocated bytes.  Nothing on a CPU worker, or before CUDA
    is initialised."""

    def __init__(self, device: str, registry: CollectorRegistry) -> None:
        self.device = device
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        if not self.device.startswith("cuda"):
            return
        import torch

        if not torch.cuda.is_initialized():
            return
        for name, doc, read in (
            ("allocated", "Bytes torch has allocated on the GPU", torch.cuda.memory_allocated),
            ("reserved", "Bytes torch's caching allocator holds", torch.cuda.memory_reserved),
            ("peak", "Most bytes torch has had allocated", torch.cuda.max_memory_allocated),
        ):
            family = GaugeMetricFamily(f"docqueue_gpu_memory_{name}_bytes", doc, labels=["device"])
            family.add_metric([self.device], float(read(self.device)))
            yield family
