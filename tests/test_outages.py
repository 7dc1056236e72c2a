"""Redis restarted under a busy fleet: workers keep their process and finish their
jobs without ``resume``; the API answers what needs only SQL and refuses, with a
reason, what needs Redis.  Each test starts its own redis-server (a persistent one it
restarts on the same port), never touching a shared one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from conftest import BACKENDS, TESTS, TIMING, make_settings, wait_until
from proxy import Proxy
from redis_server import PersistentRedis
from sqlalchemy import func, select
from test_api import GONE, error_of, register_gone_model, serve  # noqa: F401 (a fixture)
from test_schedules import (  # noqa: F401 (app_url is a fixture)
    app_url,
    beat,
    labels_or_empty,
    make_tickets,
    table_schedule,
    write_config,
)

from docqueue.broker import redis_client
from docqueue.config import settings_env
from docqueue.db.schema import Item, Result
from docqueue.producer.client import Client

#: Drills: each starts its own redis-server and restarts it under load.
DRILL = [pytest.mark.slow, TIMING]


def rows_per_document(client: Client, job_id: str) -> dict[str, int]:
    """How many documents have no row (lost), and how many more than one (doubled)."""
    with client.db.connect() as conn:
        items = conn.execute(
            select(func.count()).select_from(Item).where(Item.job_id == job_id)
        ).scalar_one()
        per_seq = (
            select(Result.seq, func.count().label("n"))
            .where(Result.job_id == job_id)
            .group_by(Result.seq)
            .subquery()
        )
        with_row, doubled = conn.execute(
            select(func.count(), func.coalesce(func.sum(per_seq.c.n - 1), 0))
        ).one()
    return {"lost": items - with_row, "doubled": int(doubled)}


@pytest.fixture
def restartable_redis(tmp_path: Path):
    server = PersistentRedis(tmp_path / "redis")
    yield server
    server.close()


@pytest.mark.slow
@TIMING
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # Redis's part: once
def test_a_worker_holding_messages_survives_redis_restarts(
    restartable_redis, database_url, start_worker, tiny_classifier, sample_texts
):
    """The crash of issue 25: Redis went away while the worker held messages and
    polled both its queues; closing the channel that was polling failed, and
    closing it again, after kombu had let go of the connection, rebuilt a Redis pool
    from nothing (``'NoneType' object has no attribute 'hostname'``) and the worker
    exited 1.  Each round here holds a bulk message and an interactive one in a
    slow worker, with both queues empty, and kills Redis (it took one round to
    kill the worker before the fix; two are run)."""
    redis = restartable_redis
    settings = make_settings(redis.url, database_url)
    worker = start_worker(
        {"tiny": tiny_classifier},
        redis_url=redis.url,
        runners={"tiny": "faulty_runners:SlowClassifier"},
        max_batch_rows=4,
        prefetch_messages=8,
    )
    broker = redis_client(redis.url)
    with Client(settings) as client:
        for round_ in range(2):
            job = client.submit_many(
                sample_texts[:48], task="classify", model="tiny", chunk_size=16
            )
            single = client.submit(sample_texts[100 + round_], task="classify", model="tiny")
            wait_until(lambda: broker.hlen("unacked") == 4, 30, "the worker to take every message")
            redis.restart(down=1.0, kill=True)
            job.wait(timeout=60)
            single.result(timeout=30)
            assert worker.proc.poll() is None, f"the worker exited:\n{worker.failure()}"
            assert rows_per_document(client, job.id) == {"lost": 0, "doubled": 0}
            wait_until(lambda: broker.hlen("unacked") == 0, 20, "every message to be acked")
    assert "Unrecoverable error" not in worker.log()
    broker.close()


def test_an_api_request_that_needs_redis_while_it_is_away_leaves_nothing(serve, settings):  # noqa: F811
    """POST /api/documents while Redis is away answered 503 but kept a pending job
    that nothing would ever publish, and its message said to resume that job; now
    the job is taken back, as POST /api/jobs does, and both say nothing was queued.
    What needs only SQL is still answered."""
    register_gone_model(settings)
    proxy = Proxy.before(settings.redis())
    try:
        server = serve(DOCQUEUE_REDIS_URL=proxy.url(settings.redis()))
        http = server.http()
        job = http.post(
            "/api/jobs", json={"task": "classify", "model": GONE, "documents": ["a", "b"]}
        ).json()["id"]
        proxy.cut()
        with Client(settings) as client:
            before = {j.job.id for j in client.jobs(interactive=True)}
            for path, body in (
                ("/api/documents", {"task": "classify", "model": GONE, "text": "one"}),
                ("/api/jobs", {"task": "classify", "model": GONE, "documents": ["a"]}),
            ):
                refused = error_of(http.post(path, json=body), 503)
                assert refused["message"].startswith("Redis is unavailable (could not publish")
                assert refused["message"].endswith(
                    "nothing was queued; send the request again once Redis answers"
                ), refused
                assert "resume" not in refused["message"]
            assert {j.job.id for j in client.jobs(interactive=True)} == before
        assert http.get(f"/api/jobs/{job}").json()["state"] == "running"
        assert http.get("/api/jobs").status_code == 200
        assert error_of(http.get("/api/dead-letters"), 503)["message"].startswith(
            "Redis is unavailable"
        )
        proxy.restore()  # and back: the same request goes through
        again = http.post("/api/documents", json={"task": "classify", "model": GONE, "text": "a"})
        assert again.status_code == 202, again.text
    finally:
        proxy.close()


#: The drill runs once, on PostgreSQL where the environment names one (a fleet's
#: database), else on SQLite.
ONE_BACKEND = pytest.mark.parametrize("database_url", [BACKENDS[-1]], indirect=True)


@pytest.mark.slow
@TIMING
@ONE_BACKEND
def test_two_busy_workers_ride_through_ten_redis_restarts_and_a_minute_without_it(
    restartable_redis,
    database_url,
    settings,
    start_worker,
    serve,  # noqa: F811
    tiny_classifier,
    sample_texts,
):
    """Issue 25's drill: two workers busy with a 60,000-document job; Redis stopped
    (SIGTERM) or killed (SIGKILL) and started again on the same port 10 times under
    load, then kept away for 60 s.  Both workers keep their process throughout, the
    job finishes without ``resume``, every document has exactly one row, and the API
    answers what needs only SQL while Redis is away and refuses the rest with a 503
    naming Redis."""
    redis = restartable_redis
    fleet = make_settings(redis.url, database_url)
    paced = {
        "runners": {"tiny": "faulty_runners:PacedClassifier"},
        "max_batch_rows": 64,
        "prefetch_messages": 4,
    }
    workers = [
        start_worker({"tiny": tiny_classifier}, redis_url=redis.url, **paced) for _ in range(2)
    ]
    pids = [w.pid for w in workers]
    http = serve(DOCQUEUE_REDIS_URL=redis.url).http()
    docs = (sample_texts * (60_000 // len(sample_texts) + 1))[:60_000]
    started = time.monotonic()
    with Client(fleet) as client:
        job = client.submit_many(docs, task="classify", model="tiny")
        submitted = time.monotonic() - started

        def alive() -> None:
            for worker in workers:
                assert worker.proc.poll() is None, f"a worker exited:\n{worker.failure()}"

        broker = redis_client(redis.url)

        since = [0]

        def busy() -> bool:
            """The job went on since the last restart (a few batches), and both
            workers (prefetch 4 each) hold messages."""
            done = job.progress().done
            assert done < len(docs), "the job finished before the drill did"
            return done >= since[0] + 256 and broker.hlen("unacked") >= 6

        restarts = 0
        for round_ in range(10):
            wait_until(busy, 60, "the workers to be busy again")
            redis.restart(down=1.0, kill=round_ % 2 == 1)
            since[0] = job.progress().done
            restarts += 1
            alive()
        wait_until(busy, 60, "the workers to be busy again")
        done_before_away = job.progress().done
        redis.stop()
        away = time.monotonic()
        time.sleep(5)
        status = http.get(f"/api/jobs/{job.id}")
        assert status.status_code == 200 and status.json()["state"] == "running", status.text
        assert http.get("/api/jobs").status_code == 200
        jobs_before = {j.job.id for j in client.jobs(interactive=True)}
        for path, body in (
            ("/api/documents", {"task": "classify", "model": "tiny", "text": "one"}),
            ("/api/jobs", {"task": "classify", "model": "tiny", "documents": ["a"]}),
        ):
            refused = error_of(http.post(path, json=body), 503)
            assert refused["message"].startswith("Redis is unavailable"), refused
        jobs_after = {j.job.id for j in client.jobs(interactive=True)}
        assert jobs_after == jobs_before, "a refused request left a job behind"
        time.sleep(max(0.0, 60 - (time.monotonic() - away)))
        alive()
        redis.start()
        done_at_return = job.progress().done
        # Back: the API publishes again (its connections to Redis are new ones).
        wait_until(lambda: http.get("/health").status_code == 200, 30, "the API's health")
        single = http.post(
            "/api/documents", json={"task": "classify", "model": "tiny", "text": "a"}
        )
        assert single.status_code == 202, single.text

        def finished() -> bool:
            alive()
            return job.progress().finished

        wait_until(finished, 300, "the job to finish")
        elapsed = time.monotonic() - started
        found = rows_per_document(client, job.id)
        assert found == {"lost": 0, "doubled": 0}
        alive()
        assert [w.pid for w in workers] == pids
        with client.db.connect() as conn:
            writers = set(
                conn.execute(select(Result.worker_id).where(Result.job_id == job.id).distinct())
                .scalars()
                .all()
            )
        assert writers == {w.worker_id for w in workers}

        def computed() -> int:  # as the workers' heartbeats count them
            return sum(w.documents for w in client.every_worker() if w.id in writers)

        sent = len(docs) + 1  # and the document sent once Redis was back
        wait_until(lambda: computed() >= sent, 10, "the last heartbeats")
        twice = computed() - sent
        wait_until(lambda: broker.hlen("unacked") == 0, 30, "every message to be acked")
        broker.close()
    print(
        f"\ndrill: {restarts} restarts and 60 s away survived by workers {pids} (same pids); "
        f"60,000 documents in {elapsed:.0f}s (submitted in {submitted:.0f}s), "
        f"{done_before_away:,} done when Redis went away for 60 s, {done_at_return:,} when it "
        "came back; "
        f"lost {found['lost']}, doubled {found['doubled']}, {twice:,} documents computed twice"
    )


@pytest.mark.slow
@TIMING
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_annotate_with_a_configured_redis_rides_through_its_restarts(
    restartable_redis, database_url, tiny_classifier, sample_texts, tmp_path
):
    """annotate exited 3 (``ConnectionError``) when the Redis it was given restarted:
    its progress board waited on pub/sub, and a publish during the restart failed.
    Now the board reads SQL while Redis is away, and publishing waits for it."""
    redis = restartable_redis
    source = tmp_path / "in.jsonl"
    texts = (sample_texts * 70)[:20_000]
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")},
        **settings_env(make_settings(redis.url, database_url)),
        "PYTHONPATH": str(TESTS),
        "DOCQUEUE_RUNNERS": json.dumps({"tiny": "faulty_runners:PacedClassifier"}),
        "DOCQUEUE_MAX_BATCH_ROWS": "64",
    }
    out = tmp_path / "out.jsonl"
    with (tmp_path / "annotate.log").open("wb") as log:
        annotate = subprocess.Popen(
            [sys.executable, "-m", "docqueue", "annotate", str(source), "--task", "classify",
             "--model", tiny_classifier, "--out", str(out)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with Client(make_settings(redis.url, database_url)) as client:
            wait_until(lambda: client.jobs(limit=1), 60, "annotate to create its job")
            job = client.jobs(limit=1)[0].job.id
            for round_ in range(3):  # the first while it still enqueues
                wait_until(lambda: client.job(job).progress().done > 0, 60, "progress")
                assert annotate.poll() is None, (tmp_path / "annotate.log").read_text()
                redis.restart(down=1.0, kill=round_ == 1)
                time.sleep(2)
            assert annotate.wait(240) == 0, (tmp_path / "annotate.log").read_text()
            assert rows_per_document(client, job) == {"lost": 0, "doubled": 0}
        assert len(out.read_text().splitlines()) == len(texts)
    finally:
        if annotate.poll() is None:
            annotate.kill()


@pytest.mark.slow
@TIMING
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_beat_rides_through_redis_restarts(
    restartable_redis,
    database_url,
    start_worker,
    tiny_classifier,
    app_url,  # noqa: F811
    tmp_path,
):
    """Beat keeps its process and its lead while Redis restarts, and its runs after
    the restarts write back what came in meanwhile."""
    redis = restartable_redis
    fleet = make_settings(redis.url, database_url)
    start_worker({"tiny": tiny_classifier}, redis_url=redis.url)
    make_tickets(app_url, [(1, 1, "refund my invoice")])
    config = write_config(tmp_path / "s.toml", table_schedule(app_url, every="1s"))
    leader = beat(fleet, config, tmp_path, "beat")
    try:
        wait_until(lambda: 1 in labels_or_empty(app_url), 60, "the first run to write back")
        for ticket in (2, 3, 4):
            redis.restart(down=1.5, kill=ticket == 3)
            make_tickets(app_url, [(ticket, ticket, f"ticket {ticket}")])
            wait_until(partial(written, app_url, ticket), 60, "a run to write it back")
            assert leader.poll() is None, (tmp_path / "beat.log").read_text()
        assert sorted(labels_or_empty(app_url)) == [1, 2, 3, 4]
    finally:
        leader.terminate()
        leader.wait(30)


def written(url: str, ticket: int) -> bool:
    """Whether the schedule wrote ``ticket``'s label back to the app's database."""
    return ticket in labels_or_empty(url)
