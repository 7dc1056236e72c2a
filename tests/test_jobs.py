"""Jobs you can manage: list, cancel, delete, prune and names, through the Client
and the ``docqueue`` command (real processes), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE, make_settings, wait_until
from sqlalchemy import func, insert, select, update
from test_api import serve  # noqa: F401  (the fixture)
from test_cli import docqueue, no_traceback, read_jsonl

from docqueue.config import Settings, settings_env
from docqueue.core.publishing import publish_items
from docqueue.db import jobs as ledger
from docqueue.db import make_engine, migrate
from docqueue.db.results import ResultRow, record_results
from docqueue.db.schema import Item, Job, Result, Tombstone
from docqueue.jobspec import JobSpec
from docqueue.params import validate_params
from docqueue.producer.client import (
    Client,
    DocumentCancelled,
    JobHandle,
    PublishFailed,
    UnknownJob,
)
from docqueue.protocol import queue_name

DAY = 86400.0


def finish(client: Client, job_id: str, seqs: list[int], label: str = "x") -> None:
    """Record results as a worker would (the upsert rule of docqueue.db.results)."""
    with client.db.begin() as conn:
        record_results(
            conn,
            [ResultRow(job_id, s, ok=True, output={"label": label}, worker_id="w") for s in seqs],
        )


def age(client: Client, job_id: str, days: float) -> None:
    with client.db.begin() as conn:
        conn.execute(
            update(Job).where(Job.id == job_id).values(created_at=time.time() - days * DAY)
        )


def statuses(client: Client, job_id: str) -> dict[str, int]:
    with client.db.connect() as conn:
        return dict(
            conn.execute(
                select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
            ).all()
        )


def texts(n: int, prefix: str = "doc") -> list[str]:
    return [f"{prefix} number {i} about files." for i in range(n)]


# --- the Client ------------------------------------------------------------------------


def test_jobs_lists_newest_first_with_filters_and_progress(client):
    first = client.submit_many(texts(4), task="classify", model="tiny", name="nightly")
    time.sleep(0.01)
    second = client.submit_many(texts(3), task="embed", model="minilm", name="adhoc")
    time.sleep(0.01)
    third = client.submit_many(texts(5), task="classify", model="tiny", name="nightly")
    finish(client, first.id, [0, 1, 2, 3])
    finish(client, third.id, [0, 1])
    third.cancel()

    listed = client.jobs()
    assert [s.job.id for s in listed] == [third.id, second.id, first.id]
    by_id = {s.job.id: s for s in listed}
    assert by_id[first.id].progress.state == "finished"
    assert by_id[second.id].progress.state == "running"
    third_progress = by_id[third.id].progress
    assert (third_progress.state, third_progress.done, third_progress.cancelled) == (
        "cancelled",
        2,
        3,
    )
    assert by_id[first.id].job.name == "nightly"

    assert [s.job.id for s in client.jobs(state="running")] == [second.id]
    assert [s.job.id for s in client.jobs(state="finished")] == [first.id]
    assert [s.job.id for s in client.jobs(state="cancelled")] == [third.id]
    assert [s.job.id for s in client.jobs(model="tiny")] == [third.id, first.id]
    assert [s.job.id for s in client.jobs(name="nightly", limit=1)] == [third.id]
    assert client.jobs(name="nobody") == []
    single = client.submit("one document", task="classify", model="tiny")
    assert single.job_id not in {s.job.id for s in client.jobs()}  # one per submit()
    assert client.jobs(interactive=True)[0].job.id == single.job_id
    with pytest.raises(ValueError, match="job state 'done'"):
        client.jobs(state="done")


def test_cancel_keeps_finished_rows_and_never_recomputes(client, redis_url):
    job = client.submit_many(texts(10), task="classify", model="tiny", chunk_size=5)
    finish(client, job.id, [0, 1, 2])
    assert job.cancel() == 7
    progress = job.progress()
    assert (progress.done, progress.failed, progress.cancelled, progress.pending) == (3, 0, 7, 0)
    assert progress.finished and progress.state == "cancelled"
    assert job.wait(timeout=1).cancelled == 7  # a cancelled job counts as finished
    assert job.info().cancelled_at is not None

    rows = list(job.results())
    assert [r["status"] for r in rows] == ["done"] * 3 + ["cancelled"] * 7
    assert rows[3] == {"id": None, "seq": 3, "status": "cancelled"}  # no output, no error
    assert client.resume(job.id) == 0  # cancelled documents are never re-published

    # A worker that computed a document before it saw the cancellation: a success
    # lands (done), an error does not turn it failed; either way one status each.
    with client.db.begin() as conn:
        record_results(
            conn,
            [
                ResultRow(job.id, 3, ok=True, output={"label": "late"}, worker_id="w"),
                ResultRow(job.id, 4, ok=False, error="boom", worker_id="w", attempts=1),
            ],
        )
    assert statuses(client, job.id) == {"done": 4, "cancelled": 6}
    late = job.progress()
    assert late.done + late.failed + late.cancelled == late.total == 10

    assert job.cancel() == 0  # again: nothing left to cancel
    finished = client.submit_many(texts(2), task="classify", model="tiny")
    finish(client, finished.id, [0, 1])
    assert finished.cancel() == 0  # a finished job is left as it is
    assert finished.progress().state == "finished"
    assert finished.info().cancelled_at is None


def test_a_cancelled_single_document_raises_instead_of_returning_nothing(client):
    handle = client.submit("The site is down", task="classify", model="tiny")
    client.job(handle.job_id).cancel()
    with pytest.raises(DocumentCancelled, match=f"document 0 of job {handle.job_id}"):
        handle.result(timeout=5)


def test_cancel_while_enqueuing_stops_the_producer(client, settings, redis_url):
    """A job cancelled while its documents are still being added stops taking them:
    no document after the cancel is stored as pending or published."""
    job_id = "e" * 32
    other = Client(settings)

    def stream() -> Iterator[str]:
        for i in range(1000):
            if i == 250:
                other.job(job_id).cancel()
            yield f"document {i}"

    try:
        job = client.submit_many(
            stream(), task="classify", model="tiny", chunk_size=50, job_id=job_id
        )
    finally:
        other.close()
    progress = job.progress()
    assert progress.state == "cancelled" and progress.finished
    assert progress.total == progress.enqueued == 300  # the chunk that saw the cancel
    assert statuses(client, job_id) == {"cancelled": 300}
    assert client.redis.llen(queue_name("classify", "tiny", "bulk")) == 5  # 250 published


def test_delete_removes_texts_and_results_and_leaves_a_tombstone(client):
    job = client.submit_many(texts(6), task="classify", model="tiny")
    finish(client, job.id, [0, 1])
    single = client.submit("hello", task="classify", model="tiny")
    keep = client.submit_many(texts(2), task="classify", model="tiny")

    assert job.delete() == 6
    with client.db.connect() as conn:
        assert conn.execute(select(func.count()).where(Item.job_id == job.id)).scalar() == 0
        assert conn.execute(select(func.count()).where(Result.job_id == job.id)).scalar() == 0
        assert conn.execute(select(Tombstone.job_id)).scalars().all() == [job.id]
        assert conn.execute(select(func.count()).where(Item.job_id == keep.id)).scalar() == 2
    with pytest.raises(UnknownJob, match=f"no job {job.id}"):
        client.job(job.id)
    with pytest.raises(UnknownJob):
        job.progress()  # a handle of a deleted job says so, never waits forever
    with pytest.raises(UnknownJob):
        job.delete()
    with pytest.raises(UnknownJob):
        job.cancel()
    client.job(single.job_id).delete()
    with pytest.raises(UnknownJob):
        single.result(timeout=5)
    # a deleted job's id cannot name a new job (workers drop its messages)
    with pytest.raises(ValueError, match="deleted job"):
        client.submit_many(texts(1), task="classify", model="tiny", job_id=job.id)
    with pytest.raises(ValueError, match="already in use"):
        client.submit_many(texts(1), task="classify", model="tiny", job_id=keep.id)


def test_prune_deletes_old_finished_and_cancelled_jobs_only(redis_url, database_url):
    settings = make_settings(redis_url, database_url, visibility_timeout=2 * DAY)
    with Client(settings) as client:
        old_done = client.submit_many(texts(2), task="classify", model="tiny")
        finish(client, old_done.id, [0, 1])
        old_cancelled = client.submit_many(texts(2), task="classify", model="tiny")
        old_cancelled.cancel()
        old_running = client.submit_many(texts(2), task="classify", model="tiny")
        new_done = client.submit_many(texts(2), task="classify", model="tiny")
        finish(client, new_done.id, [0, 1])
        for job in (old_done, old_cancelled, old_running):
            age(client, job.id, 10)
        with client.db.begin() as conn:
            conn.execute(
                insert(Tombstone),
                [
                    {"job_id": "1" * 32, "deleted_at": time.time() - 20 * DAY},
                    {"job_id": "2" * 32, "deleted_at": time.time() - 1.5 * DAY},
                ],
            )

        assert sorted(client.prune(older_than_days=5)) == sorted([old_done.id, old_cancelled.id])
        assert {s.job.id for s in client.jobs()} == {old_running.id, new_done.id}
        with client.db.connect() as conn:
            tombstones = set(conn.execute(select(Tombstone.job_id)).scalars())
        # 5 days of retention, but never less than the visibility timeout (2 days)
        assert tombstones == {"2" * 32, old_done.id, old_cancelled.id}
        assert client.prune(older_than_days=1) == []  # the rest is young or running
        with pytest.raises(ValueError, match="above 0"):
            client.prune(older_than_days=0)


def test_client_job_of_an_unknown_id_raises(client):
    with pytest.raises(UnknownJob, match="no job nope"):
        client.job("nope")
    with pytest.raises(UnknownJob):
        JobHandle(client, "nope").status()
    assert isinstance(UnknownJob("x"), KeyError)


# --- the command ---------------------------------------------------------------------


def test_jobs_cancel_delete_prune_commands_need_only_sql(tmp_path, redis_url, sqlite_url):
    """The commands are the Client's methods (tested above on both databases) behind a
    command line: one database is enough here."""
    settings = make_settings(redis_url, sqlite_url)
    with Client(settings) as client:
        _commands(tmp_path, settings, client)


def _commands(tmp_path: Path, settings: Settings, client: Client) -> None:
    env = settings_env(settings)
    sql_only = {k: v for k, v in env.items() if k != "DOCQUEUE_REDIS_URL"}
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(20)))
    queued = docqueue(
        "enqueue", str(docs), "--model", "tiny", "--name", "[bold]night[/]", cwd=tmp_path, env=env
    )
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    other = client.submit_many(texts(3), task="classify", model="other")
    finish(client, other.id, [0, 1, 2])

    listed = docqueue("jobs", "--json", cwd=tmp_path, env=sql_only)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["name"], r["state"], r["total"]) for r in rows] == [
        (other.id, None, "finished", 3),
        (job_id, "[bold]night[/]", "running", 20),
    ]
    table = docqueue("jobs", "--model", "tiny", cwd=tmp_path, env={**sql_only, "COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()  # one line per job, never squeezed or cut
    assert header.split() == [
        "JOB",
        "NAME",
        "STATE",
        "DONE",
        "FAILED",
        "CANCELLED",
        "TASK",
        "MODEL",
        "CREATED",
    ]
    assert line.split()[:8] == [job_id, "[bold]night[/]", "running", "0/20", "0", "0"] + [
        "classify",
        "tiny",
    ]  # a name shown as written, never read as markup

    cancelled = docqueue("cancel", job_id, cwd=tmp_path, env=sql_only)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {job_id} cancelled: 20 documents cancelled; 0 done and 0 failed stay" in (
        cancelled.stdout
    )
    again = docqueue("cancel", other.id, cwd=tmp_path, env=sql_only)
    assert "had already finished: nothing to cancel" in again.stdout
    by_state = docqueue("jobs", "--state", "cancelled", "--json", cwd=tmp_path, env=sql_only)
    assert [json.loads(line)["id"] for line in by_state.stdout.splitlines()] == [job_id]

    exported = docqueue("export", job_id, "--out", "out.jsonl", cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stderr
    assert {r["status"] for r in read_jsonl(tmp_path / "out.jsonl")} == {"cancelled"}

    deleted = docqueue("delete", job_id, cwd=tmp_path, env=sql_only)
    assert deleted.returncode == 0, deleted.stderr
    assert f"job {job_id} deleted with its 20 documents" in deleted.stdout
    remaining = docqueue("jobs", "--json", cwd=tmp_path, env=sql_only)
    assert [json.loads(line)["id"] for line in remaining.stdout.splitlines()] == [other.id]

    age(client, other.id, 40)
    pruned = docqueue("prune", cwd=tmp_path, env=sql_only)  # the default: 30 days
    assert pruned.returncode == 0, pruned.stderr
    assert "1 finished or cancelled job older than 30 days deleted" in pruned.stdout
    empty = docqueue("jobs", cwd=tmp_path, env=sql_only)
    assert empty.returncode == 0 and empty.stdout == "" and "no jobs" in empty.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cancel", "0" * 32], f"no job {'0' * 32}"),
        (["delete", "0" * 32], f"no job {'0' * 32}"),
        (
            ["jobs", "--state", "done"],
            "--state 'done': use one of running, finished, cancelled, failed",
        ),
        (["jobs", "--limit", "0"], "--limit 0: use 1 or more"),
        (["prune", "--older-than", "0"], "--older-than 0.0: use a number of days above 0"),
    ],
)
def test_job_commands_refuse_bad_input_in_one_line(tmp_path, sqlite_url, args, message):
    migrate(make_engine(sqlite_url))
    result = docqueue(*args, cwd=tmp_path, env={"DOCQUEUE_DATABASE_URL": sqlite_url}, timeout=60)
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_job_commands_without_a_database_say_where_they_looked(tmp_path):
    result = docqueue("jobs", cwd=tmp_path, timeout=60)
    no_traceback(result)
    assert result.returncode == 2
    assert "no database at docqueue.db" in result.stderr
    assert not (tmp_path / "docqueue.db").exists()


def test_cancel_while_a_worker_processes_a_big_job(
    tmp_path, client, settings, start_worker, tiny_classifier, sample_texts
):
    """``docqueue cancel`` in the middle of a job on a real (slow) worker holding every
    message of it: each document ends with exactly one status (the finished ones
    kept, the rest cancelled), the buffered ones and a message that comes after the
    cancel are dropped without being computed, and every message is acked."""
    start_worker(
        {"tiny": tiny_classifier},
        runners={"tiny": "faulty_runners:SlowClassifier"},
        token_budget=2048,
    )
    docs = (sample_texts * 7)[:2000]
    job = client.submit_many(docs, task="classify", model="tiny", chunk_size=50)
    wait_until(lambda: job.progress().done > 0, 60, "the job to be under way")
    result = docqueue("cancel", job.id, cwd=tmp_path, env=settings_env(settings))
    assert result.returncode == 0, result.stderr
    at_cancel = job.progress()
    assert at_cancel.state == "cancelled" and at_cancel.cancelled > 1000, at_cancel
    late_seq = 1999
    late = JobSpec("classify", "tiny", validate_params("classify", {}))
    publish_items(client.services, job.id, late, [(late_seq, docs[late_seq])])

    broker = client.redis
    queue = queue_name("classify", "tiny", "bulk")
    wait_until(
        lambda: broker.llen(queue) == 0 and broker.hlen("unacked") == 0,
        30,
        "the worker to drop and ack the cancelled job's messages",
    )
    time.sleep(1)  # a batch in flight at the cancel lands
    final = job.progress()
    assert final.done + final.failed + final.cancelled == final.total == 2000
    assert final.pending == 0 and final.failed == 0
    print(f"cancelled at {at_cancel.done} done; {final.done - at_cancel.done} computed after")
    # only what was in flight when the worker heard of the cancel was computed after it
    assert final.done - at_cancel.done <= 200, (at_cancel, final)
    with client.db.connect() as conn:
        rows = conn.execute(select(func.count()).where(Result.job_id == job.id)).scalar()
        late = conn.execute(
            select(Item.status).where(Item.job_id == job.id, Item.seq == late_seq)
        ).scalar()
    assert rows == final.done  # one result row per computed document, none for cancelled
    assert late == "cancelled"
    assert client.resume(job.id) == 0


# --- annotate: names and retention ---------------------------------------------------


def _earlier_annotate_job(
    db_url: str, docs: Path, source: str, name: str, *, stored: int, done: int
) -> str:
    """What an interrupted ``annotate --name`` leaves behind: a job with the first
    ``stored`` documents of the file in SQL (not closed), ``done`` of them computed
    (with a label no model gives, so a rerun that recomputed them would show)."""
    from docqueue.annotate import input_digest, model_name_for

    model = model_name_for(source)
    lines = [json.loads(line) for line in docs.read_text().splitlines()]
    engine = make_engine(db_url)
    migrate(engine)
    job_id = "f" * 32
    with engine.begin() as conn:
        digest = input_digest(docs, "classify", model, {}, "text", "id")
        spec = JobSpec("classify", model, source=str(docs), name=name, input_digest=digest)
        ledger.create_job(conn, job_id, spec)
        ledger.add_items(
            conn,
            job_id,
            [
                {"seq": i, "user_id": r["id"], "text": r["text"]}
                for i, r in enumerate(lines[:stored])
            ],
        )
        record_results(
            conn,
            [
                ResultRow(job_id, i, ok=True, output={"label": "EARLIER"}, worker_id="w")
                for i in range(done)
            ],
        )
    engine.dispose()
    return job_id


@pytest.mark.slow
def test_annotate_with_a_name_resumes_the_same_input(tmp_path, tiny_classifier):
    """An interrupted ``annotate --name`` run (its job half computed, its file only
    partly enqueued) is resumed by the same command: computed rows are kept, the
    rest computed; another input under the same name starts a new job.  And annotate
    prunes its ledger to the retention at its start."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(line + "\n" for line in SAMPLE.read_text().splitlines()[:60]))
    db = tmp_path / "docqueue.db"
    earlier = _earlier_annotate_job(
        f"sqlite:///{db}", docs, tiny_classifier, "weekly", stored=40, done=25
    )
    _old_jobs(db)

    def annotate(path: Path, name: str, out: str):
        return docqueue(
            "annotate",
            str(path),
            "--model",
            tiny_classifier,
            "--name",
            name,
            "--out",
            out,
            cwd=tmp_path,
        )

    resumed = annotate(docs, "weekly", "out.jsonl")
    no_traceback(resumed)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming job {earlier} (weekly): 25 of 40 documents already done" in resumed.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 60 and all(r["status"] == "done" for r in rows)
    assert [r["label"] == "EARLIER" for r in rows] == [True] * 25 + [False] * 35
    ids = [json.loads(line)["id"] for line in docs.read_text().splitlines()]
    assert [r["id"] for r in rows] == ids
    # annotate keeps its ledger to the retention (30 days): the finished job older
    # than that is gone, the unfinished one and the young one stay
    listed = docqueue("jobs", "--json", cwd=tmp_path)
    assert {json.loads(line)["id"] for line in listed.stdout.splitlines()} == {
        earlier,
        "2" * 32,
        "3" * 32,
    }

    docs.write_text(docs.read_text() + json.dumps({"id": "new", "text": "One more."}) + "\n")
    fresh = annotate(docs, "weekly", "out2.jsonl")
    assert fresh.returncode == 0, fresh.stderr
    assert (
        f"job {earlier} named weekly has another input (file, fields, task, model or "
        "parameters): starting a new job"
    ) in fresh.stderr
    rows = read_jsonl(tmp_path / "out2.jsonl")
    assert len(rows) == 61 and not any(r.get("label") == "EARLIER" for r in rows)
    listed = docqueue("jobs", "--name", "weekly", "--json", cwd=tmp_path)
    found = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [j["id"] == earlier for j in found] == [False, True]
    assert all(j["state"] == "finished" for j in found)


def _old_jobs(db: Path) -> None:
    """Three jobs in annotate's ledger: finished 40 days ago, unfinished from 40 days
    ago, finished 5 days ago."""
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    now = time.time()
    with engine.begin() as conn:
        for job_id, days, closed in (
            ("1" * 32, 40, True),
            ("2" * 32, 40, False),
            ("3" * 32, 5, True),
        ):
            ledger.create_job(conn, job_id, JobSpec("classify", "m"))
            ledger.add_items(conn, job_id, [{"seq": 0, "text": "x"}])
            if closed:
                record_results(conn, [ResultRow(job_id, 0, ok=True, output={}, worker_id="w")])
                ledger.close_job(conn, job_id, 1)
            conn.execute(update(Job).where(Job.id == job_id).values(created_at=now - days * DAY))
    engine.dispose()


def test_retention_setting_reads_days_and_inf():
    assert Settings().retention_days == 30
    assert Settings(retention_days="inf").retention_days == float("inf")
    with pytest.raises(ValueError):
        Settings(retention_days=0)


def test_a_retry_with_the_same_idempotency_key_sends_what_the_first_call_could_not(
    client, settings, start_worker, tiny_classifier, sample_texts
):
    """The first calls save their jobs but cannot publish (Redis unreachable); a
    retry with the same key returns the same job and publishes what is pending, so
    the retry a backend is told to make does finish the work."""
    unreachable = Client(make_settings("redis://127.0.0.1:1/0", settings.database()))
    try:
        with pytest.raises(PublishFailed) as single:
            unreachable.submit(
                "one document", task="classify", model="tiny", idempotency_key="single-1"
            )
        with pytest.raises(PublishFailed) as bulk:
            unreachable.submit_many(
                sample_texts[:100], task="classify", model="tiny", idempotency_key="bulk-1"
            )
    finally:
        unreachable.close()
    start_worker({"tiny": tiny_classifier})
    handle = client.submit(
        "one document", task="classify", model="tiny", idempotency_key="single-1"
    )
    assert handle.replayed and handle.job_id == single.value.job_id
    assert handle.result(timeout=30)["label"]
    job = client.submit_many(
        sample_texts[:100], task="classify", model="tiny", idempotency_key="bulk-1"
    )
    assert job.replayed and job.id == bulk.value.job_id
    job.wait(timeout=60)
    progress = job.progress()
    assert (progress.total, progress.done) == (100, 100)


def test_a_retry_racing_the_first_call_adds_each_document_once_and_both_succeed(client):
    """A retried request with the same key finds the job while the first call is still
    adding its documents: whichever adds a document first keeps it, neither fails."""
    import threading

    started, release = threading.Event(), threading.Event()

    def slow() -> Iterator[str]:
        yield "one"
        started.set()
        release.wait(10)
        yield from ("two", "three")

    first: dict[str, Any] = {}

    def original() -> None:
        first["handle"] = client.submit_many(
            slow(), task="classify", model="m", idempotency_key="race", chunk_size=1
        )

    thread = threading.Thread(target=original)
    thread.start()
    assert started.wait(10)
    retry = client.submit_many(
        ["one", "two", "three"], task="classify", model="m", idempotency_key="race", chunk_size=1
    )
    release.set()
    thread.join(10)
    assert retry.replayed and first["handle"].id == retry.id
    progress = client.job(retry.id).progress()
    assert (progress.total, progress.enqueued) == (3, 3)
    assert [row["seq"] for row in client.job(retry.id).results_page()] == [0, 1, 2]


def test_status_of_a_cancelled_job_shows_what_jobs_json_and_the_api_show(
    tmp_path,
    settings,
    client,
    serve,  # noqa: F811  (the fixture)
):
    """`docqueue status JOB` reads the state and counts the others read (one
    Progress): a cancelled job says so, when, and counts its cancelled documents,
    which add up to the total; it waits for nobody, so no worker is missed."""
    job = client.submit_many(texts(20), task="classify", model="nobody")
    finish(client, job.id, [0, 1, 2])
    with client.db.begin() as conn:
        record_results(conn, [ResultRow(job.id, 3, ok=False, error="too odd", worker_id="w")])
    time.sleep(1.1)  # the cancel comes a second after the last result
    job.cancel()
    env = {k: v for k, v in settings_env(settings).items() if k != "DOCQUEUE_REDIS_URL"}
    status = docqueue("status", job.id, cwd=tmp_path, env=env)
    no_traceback(status)
    assert status.returncode == 1, status.stderr  # not all done
    [listed] = [
        json.loads(line)
        for line in docqueue("jobs", "--json", cwd=tmp_path, env=env).stdout.splitlines()
        if json.loads(line)["id"] == job.id
    ]
    api = serve().http().get(f"/api/jobs/{job.id}").json()
    assert listed["state"] == api["state"] == "cancelled"
    assert f"  state: cancelled at {time.strftime('%Y-%m-%d')}" in status.stdout, status.stdout
    counts = re.search(
        r"documents: 20; done (\d+), failed (\d+), pending (\d+), cancelled (\d+)", status.stdout
    )
    assert counts, status.stdout
    names = ("done", "failed", "pending", "cancelled")
    shown = dict(zip(names, map(int, counts.groups()), strict=True))
    assert shown == {k: listed[k] for k in shown} == {k: api["progress"][k] for k in shown}
    assert shown == {"done": 3, "failed": 1, "pending": 0, "cancelled": 16}
    # from its creation to the cancel, not to its last result (nor 0.0s)
    took = re.search(r"  cancelled after ([\d.]+)s", status.stdout)
    assert took and float(took.group(1)) >= 1.0, status.stdout
    assert "finished in" not in status.stdout
    assert "no live worker" not in status.stdout and api["warning"] is None
