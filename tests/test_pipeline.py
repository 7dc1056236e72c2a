"""End to end with real parts: documents enqueued through the public API, real
worker processes, rows checked in SQL."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from conftest import TIMING, wait_until
from proxy import Proxy
from sqlalchemy import func, select

from docqueue.broker import redis_client
from docqueue.db import make_engine
from docqueue.db.schema import Item, Result
from docqueue.producer.client import Client, JobHandle, UnknownJob
from docqueue.protocol import bulk_queue


def rows(client: Client, job_id: str) -> Sequence[Any]:
    with client.db.connect() as conn:
        return conn.execute(
            select(Result.seq, Result.ok, Result.output, Result.worker_id)
            .where(Result.job_id == job_id)
            .order_by(Result.seq)
        ).all()


def count_results(client: Client, job_id: str) -> int:
    with client.db.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(Result).where(Result.job_id == job_id)
        ).scalar_one()


def test_every_document_gets_exactly_one_result(
    client, start_worker, tiny_classifier, sample_texts
):
    start_worker({"tiny": tiny_classifier})
    docs = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(sample_texts)]
    job = client.submit_many(docs, task="classify", model="tiny")
    progress = job.wait(timeout=120)
    assert (progress.total, progress.done, progress.failed) == (len(docs), len(docs), 0)
    found = rows(client, job.id)
    assert [r.seq for r in found] == list(range(len(docs)))
    assert all(r.ok and r.worker_id for r in found)
    out = list(job.results())
    assert [r["id"] for r in out] == [d["id"] for d in docs]
    first = out[0]
    assert first["label"] in ("negative", "neutral", "positive")
    assert set(first["scores"]) == {"negative", "neutral", "positive"}
    assert abs(sum(first["scores"].values()) - 1.0) < 1e-5
    assert first["score"] == max(first["scores"].values())


def test_submit_returns_at_once_and_result_can_be_awaited(client, start_worker, tiny_classifier):
    handle = client.submit("The parser reads one line at a time.", task="classify", model="tiny")
    assert handle.read() is None  # no worker yet: still pending, not an error
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.3)
    start_worker({"tiny": tiny_classifier})
    result = asyncio.run(handle.wait(timeout=60))
    assert result["status"] == "done" and result["label"]
    assert handle.read() == result


def test_two_workers_share_a_job_without_doubling(
    client, start_worker, tiny_classifier, sample_texts
):
    # A small prefetch so that neither worker can take the whole job in one poll.
    first = start_worker({"tiny": tiny_classifier}, prefetch_messages=2)
    second = start_worker({"tiny": tiny_classifier}, prefetch_messages=2)
    docs = (sample_texts * 10)[:3000]
    job = client.submit_many(docs, task="classify", model="tiny", chunk_size=32)
    job.wait(timeout=180)
    found = rows(client, job.id)
    assert len(found) == len(docs) == len({r.seq for r in found})
    by_worker = {r.worker_id for r in found}
    assert by_worker == {first.worker_id, second.worker_id}
    shares = [sum(r.worker_id == w for r in found) for w in by_worker]
    print(f"two workers split {len(docs)} documents {shares}")


@pytest.mark.slow
@TIMING
def test_single_document_comes_back_fast_during_a_bulk_job(
    client, start_worker, tiny_classifier, sample_texts
):
    start_worker({"tiny": tiny_classifier})
    bulk = (sample_texts * 70)[:20_000]
    job = JobHandle(client, uuid.uuid4().hex)  # named before the producer creates it
    producer = threading.Thread(
        target=lambda: client.submit_many(bulk, task="classify", model="tiny", job_id=job.id),
        daemon=True,
    )
    producer.start()

    def bulk_started() -> bool:
        try:
            return job.progress().done > 0
        except UnknownJob:  # not created yet
            return False

    wait_until(bulk_started, 60, "the bulk job to start")
    latencies = []
    for i in range(10):
        started = time.monotonic()
        handle = client.submit(f"Single document number {i}.", task="classify", model="tiny")
        handle.result(timeout=10)
        latencies.append(time.monotonic() - started)
        time.sleep(0.1)
    progress = job.progress()
    pending = (progress.total or len(bulk)) - progress.done
    assert pending > 0, "the bulk job must still be running while we measure"
    producer.join(120)
    job.wait(timeout=240)
    p50, worst = statistics.median(latencies), max(latencies)
    print(
        f"single document during a 20,000-document bulk job: p50 {p50 * 1000:.0f} ms, "
        f"max {worst * 1000:.0f} ms; {pending} bulk documents still pending after the last"
    )
    assert worst < 1.0


@pytest.mark.slow
@TIMING
def test_worker_killed_between_commit_and_ack_leaves_one_row(
    client, start_worker, tiny_classifier, sample_texts, settings
):
    """The worker commits its results, its acks cannot reach Redis, it is killed: Redis
    hands the messages to the next worker, which recomputes them; SQL keeps one row."""
    proxy = Proxy.before(settings.redis())
    try:
        doomed = start_worker(
            {"tiny": tiny_classifier},
            redis_url=proxy.url(settings.redis()),
            max_wait_ms=1500,  # hold the batch long enough to cut Redis after the fetch
            token_budget=10**7,
        )
        docs = sample_texts[:200]
        job = client.submit_many(docs, task="classify", model="tiny", chunk_size=50)
        broker = redis_client(settings.redis())
        wait_until(lambda: broker.hlen("unacked") == 4, 20, "the worker to take all 4 messages")
        proxy.cut()
        job.wait(timeout=30)  # committed although Redis is gone
        assert broker.hlen("unacked") == 4, "acks must not have reached Redis"
        doomed.kill()
        assert count_results(client, job.id) == len(docs)

        successor = start_worker(
            {"tiny": tiny_classifier}, visibility_timeout=1.0, restore_interval=0.5
        )
        wait_until(
            lambda: (
                broker.hlen("unacked") == 0 and broker.llen(bulk_queue("classify", "tiny")) == 0
            ),
            60,
            "redelivered messages to be acked",
        )
        found = rows(client, job.id)
        assert len(found) == len(docs) == len({r.seq for r in found})
        assert {r.worker_id for r in found} == {doomed.worker_id}  # the first success won
        engine = make_engine(settings.database())
        with engine.connect() as conn:
            from docqueue.db.schema import WorkerBeat

            wait_until(
                lambda: _documents_done(engine, successor.worker_id) >= len(docs),
                10,
                "the successor's heartbeat",
            )
            statuses = set(conn.execute(select(Item.status).where(Item.job_id == job.id)).scalars())
            assert WorkerBeat is not None
        engine.dispose()
        assert statuses == {"done"}
    finally:
        proxy.close()


def _documents_done(engine, worker_id: str) -> int:
    from docqueue.db.schema import WorkerBeat

    with engine.connect() as conn:
        return conn.execute(
            select(WorkerBeat.documents).where(WorkerBeat.id == worker_id)
        ).scalar_one()


def test_back_pressure_holds_the_producer_instead_of_filling_redis(
    client, start_worker, tiny_classifier, sample_texts, settings
):
    limited = Client(settings.model_copy(update={"max_queued_messages": 3}))
    queue = bulk_queue("classify", "tiny")
    lengths = []
    done = threading.Event()

    def produce():
        limited.submit_many(sample_texts, task="classify", model="tiny", chunk_size=10)
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    for _ in range(20):
        lengths.append(limited.redis.llen(queue))
        time.sleep(0.05)
    assert not done.is_set(), "with no worker the producer must be waiting"
    assert max(lengths) <= 3
    start_worker({"tiny": tiny_classifier})
    assert done.wait(60)
    limited.close()
