"""A worker never consumes work it cannot record: jobs its database does not hold go
back to the queue for a worker that has them, deleted and cancelled jobs' documents
are dropped without being computed, and a worker refuses to start without naming
the producers' database.  Real worker processes, real Redis and SQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, wait_until
from sqlalchemy import func, select, update

from docqueue import deadletters
from docqueue.broker import redis_client
from docqueue.db import make_engine
from docqueue.db.schema import Item, Result
from docqueue.protocol import BatchMessage, bulk_queue

QUEUE = bulk_queue("classify", "tiny")


def queue_empty(redis_url: str) -> bool:
    broker = redis_client(redis_url)
    return broker.llen(QUEUE) == 0 and broker.hlen("unacked") == 0


def result_count(database_url: str, job_id: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(Result).where(Result.job_id == job_id)
            ).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.slow
# Which database the owner has does not change what the stranger does (it finds no
# job row in its own SQLite file): one run, not one per backend, saves CI 20 s.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_on_another_database_returns_the_messages_for_one_that_has_the_job(
    client, settings, start_worker, tiny_classifier, sample_texts, tmp_path
):
    stranger = start_worker(
        {"tiny": tiny_classifier},
        database_url=f"sqlite:///{tmp_path / 'another.db'}",
        log_interval=0.5,
    )
    job = client.submit_many(sample_texts[:200], task="classify", model="tiny")
    wait_until(
        lambda: "is not in this worker's database" in stranger.log(), 30, "the stranger to say so"
    )
    time.sleep(2)  # messages go back and forth; none may be acked by the stranger
    assert job.progress().done == 0
    broker = redis_client(settings.redis())
    assert broker.llen(QUEUE) + broker.hlen("unacked") > 0, "the messages must stay queued"

    owner = start_worker({"tiny": tiny_classifier}, log_interval=0.5)
    final = job.wait(timeout=120)
    assert (final.done, final.failed) == (200, 0)
    assert result_count(settings.database(), job.id) == 200
    assert {row["status"] for row in job.results()} == {"done"}
    wait_until(lambda: queue_empty(settings.redis()), 30, "the queue to drain")
    # said once per job, not once per message
    assert stranger.log().count(f"job {job.id} is not in this worker's database") == 1
    wait_until(lambda: "docs/s" in owner.log(), 10, "the owner's throughput line")
    assert "--uid" not in stranger.log() + owner.log()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_message_no_worker_can_record_becomes_a_dead_letter_after_max_returns(
    client, settings, start_worker, tiny_classifier, sample_texts, tmp_path
):
    """Only a worker on another database: the messages go back and forth a bounded
    number of times, then wait as dead letters that say why, instead of cycling
    between the queue and unacked forever."""
    stranger = start_worker(
        {"tiny": tiny_classifier},
        database_url=f"sqlite:///{tmp_path / 'another.db'}",
        max_returns=2,
    )
    job = client.submit_many(sample_texts[:130], task="classify", model="tiny")  # 3 messages
    wait_until(lambda: len(client.dead_letters()) == 3, 60, "the three messages to be set aside")
    wait_until(lambda: queue_empty(settings.redis()), 10, "the queue and unacked to be empty")
    for entry in client.dead_letters():
        assert entry.queue == QUEUE
        assert entry.reason == (
            f"job {job.id} is not in this worker's database, and no worker that has it took "
            "the message in 2 returns to the queue (do the workers and the producers use the "
            "same DOCQUEUE_DATABASE_URL? once one does, replay it with docqueue dead-letters "
            "replay)"
        )
    progress = job.progress()
    assert (progress.done, progress.failed, progress.pending) == (0, 0, 130)
    said = f"job {job.id} is not in this worker's database: its messages go back"
    assert stranger.log().count(said) == 1  # once, however many returns
    # set aside, a message's returns are forgotten: replayed (once a worker on the
    # right database runs; test_deadletters.py replays and computes), it starts afresh
    assert redis_client(settings.redis()).keys("docqueue.returns.*") == []


def test_messages_of_a_deleted_job_are_acked_and_dropped(
    client, settings, start_worker, tiny_classifier, sample_texts
):
    job = client.submit_many(sample_texts[:50], task="classify", model="tiny")
    job.delete()  # before any worker ran: only the tombstone stays
    worker = start_worker({"tiny": tiny_classifier})
    wait_until(lambda: queue_empty(settings.redis()), 30, "the deleted job's messages to go")
    assert result_count(settings.database(), job.id) == 0
    assert "not in this worker's database" not in worker.log()


def test_documents_of_a_cancelled_job_are_not_computed(
    client, settings, start_worker, tiny_classifier, sample_texts
):
    # A slow batch flush keeps documents buffered while the job is cancelled.
    start_worker({"tiny": tiny_classifier}, max_wait_ms=60_000, token_budget=10**9)
    job = client.submit_many(sample_texts[:64], task="classify", model="tiny")
    wait_until(lambda: redis_client(settings.redis()).llen(QUEUE) == 0, 30, "the worker to take it")
    job.cancel()
    wait_until(lambda: queue_empty(settings.redis()), 30, "the cancelled documents to be dropped")
    assert result_count(settings.database(), job.id) == 0
    assert job.progress().cancelled == 64
    # and a late message of the cancelled job is dropped on arrival
    client.resume(job.id)  # publishes nothing: no document is pending any more
    client.publish(
        BatchMessage(
            job=job.id, task="classify", model="tiny", items=[(0, "late copy")], enqueued_at=0.0
        )
    )
    wait_until(lambda: queue_empty(settings.redis()), 30, "the late message to be dropped")
    assert result_count(settings.database(), job.id) == 0


def test_a_worker_refuses_to_start_without_the_producers_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    env["DOCQUEUE_REDIS_URL"] = (
        "redis://127.0.0.1:1/0"  # never reached: the database is checked first
    )
    result = subprocess.run(
        [sys.executable, "-m", "docqueue", "worker", "--model", "x=/nonexistent"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "set DOCQUEUE_DATABASE_URL to the database the producers use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "docqueue.db").exists()


def test_documents_stored_before_digests_are_checked_by_their_text(
    client, settings, start_worker, tiny_classifier
):
    """Documents written before dq_items had digests (migration 0004) have none: a
    worker compares a message's document with the stored text instead.  The genuine
    one is computed; a message carrying other text for the same job is a dead letter
    and that document stays pending."""
    texts = ["an order charged twice", "the site is down"]
    job = client.submit_many(texts, task="classify", model="tiny")
    broker = redis_client(settings.redis())
    broker.delete(QUEUE)
    with client.db.begin() as conn:
        conn.execute(update(Item).where(Item.job_id == job.id).values(digest=None))
    for seq, text in ((0, texts[0]), (1, "a forged text")):
        client.publish(
            BatchMessage(
                job=job.id, task="classify", model="tiny", items=[(seq, text)], enqueued_at=0.0
            )
        )
    worker = start_worker({"tiny": tiny_classifier})
    wait_until(lambda: job.progress().done >= 1, 30, "the genuine document")
    wait_until(lambda: queue_empty(settings.redis()), 20, "both messages settled")
    assert [row["status"] for row in job.results()] == ["done", "pending"]
    (letter,) = deadletters.listing(broker)
    assert (letter.queue, letter.reason) == (
        QUEUE,
        f"job {job.id}, document 1: not the text the job holds",
    )
    assert "Traceback" not in worker.log()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_returned_message_is_counted_in_words(client, start_worker, tiny_classifier, tmp_path):
    """One message sent back to the queue reads "1 message", not "1 messages"."""
    stranger = start_worker(
        {"tiny": tiny_classifier}, database_url=f"sqlite:///{tmp_path / 'another.db'}"
    )
    client.submit_many(["one document, one message"], task="classify", model="tiny")
    wait_until(lambda: "returning 1 " in stranger.log(), 30, "the stranger to return it")
    assert "returning 1 message to the queue" in stranger.log()
