"""Faults, injected on private instances: a worker killed, Redis restarted without
persistence, the database cut off behind a proxy, a document that makes the model
raise, out-of-memory, SIGTERM.  Whatever happens: one row per document, exactly."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import pytest
from conftest import TIMING, make_settings, wait_until
from proxy import Proxy
from sqlalchemy import func, select

from docqueue.broker import redis_client
from docqueue.config import settings_env
from docqueue.db.schema import Item, Result
from docqueue.launcher import EmbeddedRedis
from docqueue.producer.client import Client
from docqueue.protocol import bulk_queue

# Fault drills: each starts its own services or kills processes and waits for recovery.
pytestmark = [pytest.mark.slow, TIMING]

QUEUE = bulk_queue("classify", "tiny")


def results(client: Client, job_id: str) -> Sequence[Any]:
    with client.db.connect() as conn:
        return conn.execute(
            select(Result.seq, Result.ok, Result.worker_id, Result.batch_size, Result.error)
            .where(Result.job_id == job_id)
            .order_by(Result.seq)
        ).all()


def assert_exactly_one_row_each(client: Client, job_id: str, n: int) -> Sequence[Any]:
    found = results(client, job_id)
    assert [r.seq for r in found] == list(range(n))
    with client.db.connect() as conn:
        statuses = conn.execute(
            select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
        ).all()
    assert dict(statuses) == {"done": n}
    return found


def test_worker_killed_mid_batch(client, settings, start_worker, tiny_classifier, sample_texts):
    slow = start_worker(
        {"tiny": tiny_classifier},
        runners={"tiny": "faulty_runners:SlowClassifier"},
        token_budget=2048,
        prefetch_messages=4,
    )
    docs = (sample_texts * 2)[:400]
    job = client.submit_many(docs, task="classify", model="tiny", chunk_size=50)
    wait_until(lambda: 0 < job.progress().done < len(docs) - 100, 60, "the job to be half done")
    slow.kill()  # SIGKILL, in the middle of a batch
    broker = redis_client(settings.redis())
    assert broker.hlen("unacked") > 0, "the killed worker held unacked messages"

    successor = start_worker(
        {"tiny": tiny_classifier}, visibility_timeout=1.0, restore_interval=0.5
    )
    job.wait(timeout=120)
    found = assert_exactly_one_row_each(client, job.id, len(docs))
    assert {r.worker_id for r in found} == {slow.worker_id, successor.worker_id}
    wait_until(lambda: broker.hlen("unacked") == 0, 20, "every message to be acked")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_restart_without_persistence_then_resume(
    database_url, start_worker, tmp_path, tiny_classifier, sample_texts
):
    port = free_port()
    redis = EmbeddedRedis(str(tmp_path / "redis-a"), port=port)
    settings = make_settings(redis.url, database_url)
    client = Client(settings)
    try:
        start_worker(
            {"tiny": tiny_classifier},
            redis_url=redis.url,
            runners={"tiny": "faulty_runners:SlowClassifier"},
            token_budget=4096,
            prefetch_messages=2,
        )
        docs = sample_texts[:300]
        job = client.submit_many(docs, task="classify", model="tiny", chunk_size=25)
        wait_until(lambda: job.progress().done >= 50, 60, "some progress")
        redis.shutdown()  # everything queued is gone: no persistence
        redis = EmbeddedRedis(str(tmp_path / "redis-b"), port=port)
        stalled = _wait_until_stable(job)
        assert 0 < stalled.pending < len(docs), stalled

        resumed = subprocess.run(
            [sys.executable, "-m", "docqueue", "resume", job.id],
            env={**os.environ, **settings_env(settings)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert int(resumed.stdout) == stalled.pending  # exactly what SQL says is not done
        job.wait(timeout=180)
        assert_exactly_one_row_each(client, job.id, len(docs))
    finally:
        client.close()
        redis.shutdown()


def _wait_until_stable(job, quiet: float = 2.5, timeout: float = 60):
    """Progress once it has not moved for ``quiet`` seconds."""
    last, since = job.progress(), time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = job.progress()
        if (now.done, now.failed) != (last.done, last.failed):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise TimeoutError("progress never settled")


@pytest.fixture
def postgres_url(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("cutting the database off needs a database server (PostgreSQL)")
    return database_url


def test_database_outage_holds_results_and_stops_taking_messages(
    postgres_url, settings, client, start_worker, tiny_classifier, sample_texts
):
    proxy = Proxy.before(postgres_url)
    via_proxy = proxy.url(postgres_url)
    try:
        worker = start_worker(
            {"tiny": tiny_classifier}, database_url=via_proxy, prefetch_messages=2
        )
        proxy.cut()
        docs = (sample_texts * 2)[:400]
        job = client.submit_many(docs, task="classify", model="tiny", chunk_size=50)
        broker = redis_client(settings.redis())
        wait_until(lambda: broker.hlen("unacked") == 2, 20, "the worker to take its prefetch")
        time.sleep(3)
        assert broker.hlen("unacked") == 2, "nothing acked while nothing is committed"
        assert broker.llen(QUEUE) == 8 - 2, "no further messages taken"
        assert job.progress().done == 0
        proxy.restore()
        job.wait(timeout=120)
        assert_exactly_one_row_each(client, job.id, len(docs))
        wait_until(lambda: broker.hlen("unacked") == 0, 20, "acks after the commit")
        log = worker.log()
        assert "database unavailable" in log and "database reachable again" in log
    finally:
        proxy.close()


def test_poison_document_is_isolated_and_the_rest_of_its_batch_succeeds(
    client, start_worker, tiny_classifier, sample_texts
):
    start_worker({"tiny": tiny_classifier}, runners={"tiny": "faulty_runners:PoisonClassifier"})
    docs = sample_texts[:200]
    docs[37] = "This one is POISON to the model."
    docs[150] = "POISON again."
    job = client.submit_many(docs, task="classify", model="tiny")
    progress = job.wait(timeout=120)
    assert (progress.done, progress.failed) == (198, 2)
    found = {r.seq: r for r in results(client, job.id)}
    assert len(found) == 200
    for seq in (37, 150):
        assert not found[seq].ok
        assert found[seq].error == (
            "model failed on this document 3 times: ValueError: the "
            "model cannot digest this document"
        )
    with client.db.connect() as conn:
        attempts = (
            conn.execute(
                select(Item.attempts).where(Item.job_id == job.id, Item.seq.in_([37, 150]))
            )
            .scalars()
            .all()
        )
    assert attempts == [3, 3]
    assert sum(r.ok for r in found.values()) == 198


def test_out_of_memory_halves_the_batch_and_remembers(
    client, start_worker, tiny_classifier, sample_texts
):
    from faulty_runners import OOM_ABOVE_ROWS

    worker = start_worker(
        {"tiny": tiny_classifier},
        runners={"tiny": "faulty_runners:OutOfMemoryAbove"},
        max_batch_rows=64,
        token_budget=64 * 128,
    )
    docs = (sample_texts * 2)[:500]
    job = client.submit_many(docs, task="classify", model="tiny")
    progress = job.wait(timeout=120)
    assert (progress.done, progress.failed) == (500, 0)  # no document fails for it
    sizes = [r.batch_size for r in results(client, job.id)]
    assert max(sizes) <= OOM_ABOVE_ROWS
    halvings = len(re.findall("out of memory on", worker.log()))
    batches = len(docs) / OOM_ABOVE_ROWS
    assert 1 <= halvings <= 6, f"{halvings} halvings for ~{batches:.0f} batches: not remembered"


def test_sigterm_finishes_what_the_worker_holds(
    client, settings, start_worker, tiny_classifier, sample_texts
):
    worker = start_worker({"tiny": tiny_classifier}, max_wait_ms=60_000, token_budget=10**7)
    docs = sample_texts[:300]
    job = client.submit_many(docs, task="classify", model="tiny", chunk_size=50)
    broker = redis_client(settings.redis())
    wait_until(
        lambda: broker.hlen("unacked") == 6 and broker.llen(QUEUE) == 0,
        20,
        "the worker to hold all six messages",
    )
    assert job.progress().done == 0  # buffered, waiting for max_wait
    assert worker.stop() == 0
    assert_exactly_one_row_each(client, job.id, len(docs))
    assert broker.hlen("unacked") == 0 and broker.llen(QUEUE) == 0


def test_sigterm_returns_what_it_cannot_finish_in_time(
    client, settings, start_worker, tiny_classifier, sample_texts
):
    worker = start_worker(
        {"tiny": tiny_classifier},
        runners={"tiny": "faulty_runners:SlowClassifier"},
        token_budget=1024,
        shutdown_grace=0.5,
    )
    docs = (sample_texts * 3)[:800]
    job = client.submit_many(docs, task="classify", model="tiny", chunk_size=50)
    broker = redis_client(settings.redis())
    wait_until(lambda: job.progress().done > 0, 60, "the first batch")
    assert worker.stop() == 0
    assert broker.hlen("unacked") == 0, "nothing left unacked in limbo"
    assert broker.llen(QUEUE) > 0, "unfinished messages went back to the queue"
    assert job.progress().pending > 0
    start_worker({"tiny": tiny_classifier})
    job.wait(timeout=120)
    assert_exactly_one_row_each(client, job.id, len(docs))


def test_messages_are_json_and_settings_travel(settings):
    """The Celery app both sides build serializes JSON only and shares the visibility
    timeout (the same value must be set wherever it appears)."""
    from docqueue.broker import make_celery

    app = make_celery(settings.model_copy(update={"visibility_timeout": 123.0}), settings.redis())
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]
    assert app.conf.broker_transport_options["visibility_timeout"] == 123.0
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    json.dumps(app.conf.broker_transport_options)
