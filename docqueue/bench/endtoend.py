"""docqueue end to end: enqueue -> Redis -> a worker process -> SQL.

Measured the way users see it: documents submitted through the Client, results
read back from SQL.  Steady-state throughput is taken between 10% and 90% of the
job (start-up and the tail excluded); wall time including start-up is reported
separately.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from docqueue.bench.arms import Arm
from docqueue.config import Settings
from docqueue.db import jobs as ledger
from docqueue.db import tallies
from docqueue.db.workers import WorkerState
from docqueue.db.workers import worker_state as db_worker_state
from docqueue.jobspec import JobSpec
from docqueue.launcher import LocalWorkers, WorkerProcess, serve_redis
from docqueue.producer.client import Client
from docqueue.protocol import BatchMessage, Document, document_digest

MODEL = "bench"


@contextmanager
def services(settings: Settings, directory: Path) -> Iterator[Settings]:
    """The settings with Redis and a database filled in: the given ones, else an
    embedded Redis and a SQLite file in ``directory``."""
    with serve_redis(settings, directory) as redis_url:
        updates: dict[str, Any] = {"redis_url": SecretStr(redis_url)}
        default = Settings.model_fields["database_url"].default
        if settings.database_url == default and "DOCQUEUE_DATABASE_URL" not in os.environ:
            updates["database_url"] = SecretStr(f"sqlite:///{directory / 'bench.db'}")
        yield settings.model_copy(update=updates)


def start_worker(
    settings: Settings, model_dir: Path, device: str, log_dir: Path, name: str
) -> WorkerProcess:
    """A worker serving the bench model, not waited for (its start-up is measured);
    its log is ``log_dir/{name}-0.log``."""
    workers = LocalWorkers(settings, {MODEL: str(model_dir)}, [device], log_dir=log_dir, name=name)
    return workers.processes[0]


def worker_state(client: Client, worker: WorkerProcess) -> WorkerState | None:
    if worker.worker_id is None:
        return None
    with client.db.connect() as conn:
        return db_worker_state(conn, worker.worker_id)


def final_state(
    client: Client, worker: WorkerProcess, documents: int, timeout: float = 30
) -> WorkerState:
    """The worker's heartbeat once it counts ``documents`` (beats lag a little)."""
    deadline = time.monotonic() + timeout
    while True:
        state = worker_state(client, worker)
        if state is not None and (state.documents >= documents or time.monotonic() > deadline):
            return state
        time.sleep(0.2)


@dataclass
class Progress:
    """(seconds, documents done) samples."""

    samples: list[tuple[float, int]]

    def steady_rate(self, total: int) -> float:
        """Documents per second between 10% and 90% of ``total``.  Where one sample
        saw both, the rate over that sample and the one before it; NaN where the very
        first sample did (a job too small to measure: it ran before the sampling)."""
        low = next(i for i, s in enumerate(self.samples) if s[1] >= total * 0.1)
        high = next(i for i, s in enumerate(self.samples) if s[1] >= total * 0.9)
        if low == high:
            low -= 1
        if low < 0:
            return math.nan
        (t0, n0), (t1, n1) = self.samples[low], self.samples[high]
        return (n1 - n0) / max(t1 - t0, 1e-9)


def _count_results(client: Client) -> int:
    with client.db.connect() as conn:
        return tallies.result_rows(conn)


def _follow(client: Client, until: int, baseline: int, timeout: float) -> Progress:
    samples = []
    deadline = time.monotonic() + timeout
    started = time.perf_counter()
    while time.monotonic() < deadline:
        done = _count_results(client) - baseline
        samples.append((time.perf_counter() - started, done))
        if done >= until:
            return Progress(samples)
        time.sleep(0.05)
    raise TimeoutError(f"{samples[-1][1]} of {until} documents after {timeout}s")


def bulk(
    client: Client,
    worker: WorkerProcess,
    task: str,
    docs: Sequence[Document],
    params: dict[str, Any],
    timeout: float,
) -> tuple[Arm, Arm]:
    """(d): a bulk job through the queue.  Returns the steady-state arm and the
    wall-time-including-start-up arm (the worker was launched just before)."""
    baseline = _count_results(client)
    producer = threading.Thread(
        target=lambda: client.submit_many(submittable(docs), task=task, model=MODEL, params=params),
        daemon=True,
    )
    worker.wait_ready(600)
    producer.start()
    progress = _follow(client, len(docs), baseline, timeout)
    wall = time.perf_counter() - worker.started
    producer.join()
    state = final_state(client, worker, len(docs))
    steady = Arm(
        key="d",
        name="(d) docqueue end to end, steady state",
        docs=len(docs),
        seconds=len(docs) / progress.steady_rate(len(docs)),
        real_tokens=0,
        # padded tokens of the whole job, over the steady-state time of the whole job
        padded_tokens=state.padded_tokens,
        peak_gpu_bytes=state.peak_gpu_bytes,
    )
    whole = Arm(
        key="d-wall",
        name="(d) end to end, wall time incl. worker start-up",
        docs=len(docs),
        seconds=wall,
        real_tokens=0,
    )
    return steady, whole


def prequeue_singles(
    client: Client, task: str, docs: Sequence[str], params: dict[str, Any]
) -> float:
    """One interactive job and message per document, as a backend sends them, queued
    before any worker runs.  Returns the producer's microseconds per message."""
    jobs = [uuid.uuid4().hex for _ in docs]
    for start in range(0, len(docs), 1000):
        with client.db.begin() as conn:
            for job, doc in zip(
                jobs[start : start + 1000], docs[start : start + 1000], strict=True
            ):
                spec = JobSpec(task, MODEL, params, lane="interactive")
                ledger.create_job(conn, job, spec, total=1)
                ledger.add_items(
                    conn, job, [{"seq": 0, "text": doc, "digest": document_digest(doc)}]
                )
    started = time.perf_counter()
    for job, doc in zip(jobs, docs, strict=True):
        client.publish(
            BatchMessage(
                job=job,
                task=task,
                model=MODEL,
                params=params,
                lane="interactive",
                items=[(0, doc)],
                enqueued_at=time.time(),
            )
        )
    return (time.perf_counter() - started) / len(docs) * 1e6


def drain(client: Client, worker: WorkerProcess, expected: int, timeout: float) -> float:
    """Steady docs/s of a worker emptying what was queued before it started."""
    baseline = _count_results(client)
    worker.wait_ready(600)
    return _follow(client, expected, baseline, timeout).steady_rate(expected)


@dataclass
class Latency:
    rate: float
    seconds: list[float]

    def percentile(self, p: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    def describe(self) -> str:
        ms = [self.percentile(p) * 1000 for p in (50, 95, 99)]
        return (
            f"p50 {ms[0]:.0f} ms, p95 {ms[1]:.0f} ms, p99 {ms[2]:.0f} ms "
            f"({len(self.seconds)} documents at {self.rate:g}/s, mean "
            f"{statistics.mean(self.seconds) * 1000:.0f} ms)"
        )


def latency(
    client: Client, task: str, docs: Sequence[str], params: dict[str, Any], rate: float, count: int
) -> Latency:
    """Submit single documents at ``rate`` per second; time each from submit to its
    result in SQL."""

    def one(doc: str) -> float:
        started = time.perf_counter()
        client.submit(doc, task=task, model=MODEL, params=params).result(timeout=60)
        return time.perf_counter() - started

    start = time.perf_counter()
    futures = []
    with ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, docs[i % len(docs)]))
        return Latency(rate, [f.result() for f in futures])


def latency_during_bulk(
    client: Client,
    worker_factory: Any,
    task: str,
    docs: Sequence[str],
    bulk_docs: int,
    params: dict[str, Any],
    rate: float,
    count: int,
) -> tuple[Latency, int]:
    """Latency while a worker works through a bulk job of ``bulk_docs``.  The bulk job
    is queued first and the worker started after, so what is measured is the worker's
    handling of both lanes, not a producer sharing this machine's cores.  Returns the
    latency and the bulk documents still pending when the last single one came back."""
    bulk_list = [docs[i % len(docs)] for i in range(bulk_docs)]
    job = client.submit_many(submittable(bulk_list), task=task, model=MODEL, params=params)
    worker = worker_factory()
    try:
        worker.wait_ready(600)
        deadline = time.monotonic() + 120
        while job.progress().done == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        measured = latency(client, task, docs, params, rate, count)
        pending = job.progress().pending
        job.wait(timeout=3600)
    finally:
        worker.stop(60)
    return measured, pending


def submittable(docs: Sequence[Document]) -> list[Any]:
    """``docs`` as :meth:`Client.submit_many` reads them: a document of fields (a
    mapping) goes in a record's text, since a bare mapping is a record."""
    return [{"text": d} if isinstance(d, dict) else d for d in docs]
