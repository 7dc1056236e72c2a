"""Nothing left half-made: the producer adding a job's documents holds the job (a
lease it renews in SQL); a job whose producer stopped before all its documents were
in is closed as failed by the workers, with a reason saying what is kept and how to
resubmit it; a retry that can complete it (the same request with its
Idempotency-Key) reopens it.  Real ``docqueue serve`` and worker processes."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_until
from sqlalchemy import func, select
from test_api import Server, serve  # noqa: F401 (a fixture)

from docqueue.db import jobs as ledger
from docqueue.db import leases
from docqueue.db.schema import Item, Result
from docqueue.jobspec import JobSpec
from docqueue.producer.client import Client

#: Seconds a producer's hold lasts in these tests (renewed every third of it).
LEASE = 2.0


def test_a_lapsed_lease_closes_the_job_as_failed_and_a_renewed_one_does_not(client):
    now = time.time()
    with client.db.begin() as conn:
        for job_id, until in (("a" * 32, now - 1), ("b" * 32, now + 60)):
            spec = JobSpec("classify", "m", source="in.jsonl", input_digest="d" * 64)
            ledger.create_job(conn, job_id, spec, lease_until=until)
            ledger.add_items(conn, job_id, [{"seq": 0, "text": "x"}, {"seq": 1, "text": "y"}])
        assert leases.lapsed(conn, now) == ["a" * 32]
        reason = leases.close_lapsed(conn, "a" * 32, now)
        assert leases.close_lapsed(conn, "b" * 32, now) is None  # its producer is there
        assert leases.close_lapsed(conn, "a" * 32, now) is None  # closed once
    assert reason is not None and reason.startswith(
        "its producer stopped before all its documents were in (its hold on the job lapsed at "
    )
    assert reason.endswith(
        f"2 documents were saved, 0 of them have results (kept); run `docqueue resume {'a' * 32}`"
        " to complete it from in.jsonl"
    )
    failed = client.job("a" * 32).progress()
    assert (failed.state, failed.failure, failed.finished) == ("failed", reason, True)
    assert [j.job.id for j in client.jobs(state="failed")] == ["a" * 32]
    assert [j.job.id for j in client.jobs(state="running")] == ["b" * 32]
    with client.db.begin() as conn:  # a retry that can complete it takes hold again
        assert leases.reopen(conn, "a" * 32, time.time() + 60)
    assert client.job("a" * 32).progress().state == "running"
    assert client.prune(older_than_days=1e-9) == []  # running jobs are kept


def upload(http: httpx.Client, path: Path, **headers: str) -> httpx.Response:
    with path.open("rb") as f:
        return http.post(
            "/api/jobs/upload",
            files={"file": ("docs.jsonl", f, "application/x-ndjson")},
            data={"task": "classify", "model": "tiny"},
            headers=headers,
        )


def kill_mid_upload(server: Server, client: Client, path: Path, **headers: str) -> str:
    """Upload ``path`` and SIGKILL the server once part of it is saved and some of it
    computed; returns the job's id."""
    known = {j.job.id for j in client.jobs(limit=1000)}
    http = server.http()

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
            upload(http, path, **headers)

    threading.Thread(target=send, daemon=True).start()

    def new_job() -> Any:
        fresh = [j for j in client.jobs(limit=1000) if j.job.id not in known]
        return fresh and fresh[0].progress.done >= 64 and fresh[0]

    wait_until(new_job, 60, "part of the upload to be saved and computed")
    server.proc.kill()
    server.proc.wait()
    job = new_job().job
    assert job.total is None, "the upload finished before the API was killed"
    return str(job.id)


def rows(client: Client, job_id: str) -> tuple[int, int]:
    with client.db.connect() as conn:
        items = conn.execute(
            select(func.count()).select_from(Item).where(Item.job_id == job_id)
        ).scalar_one()
        results = conn.execute(
            select(func.count()).select_from(Result).where(Result.job_id == job_id)
        ).scalar_one()
    return items, results


@pytest.mark.slow
# The database's part is the conditional UPDATEs the test above runs on both: once.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_upload_whose_api_was_killed_is_closed_as_failed_and_a_keyed_retry_completes_it(
    serve,  # noqa: F811
    settings,
    client,
    start_worker,
    tiny_classifier,
    sample_texts,
    tmp_path,
):
    """Issue 25: the API killed mid-upload left a job with no total and thousands of
    computed documents ``running`` forever (nothing closed it, prune skipped it).
    Now a worker closes it as failed once its lease lapses; without an
    Idempotency-Key it can only be resubmitted, with one the same request again
    completes it."""
    start_worker({"tiny": tiny_classifier})
    texts = (sample_texts * 70)[:20_000]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    lease = {"DOCQUEUE_ENQUEUE_LEASE": str(LEASE)}

    job_id = kill_mid_upload(serve(**lease), client, path)
    wait_until(lambda: client.job(job_id).progress().state == "failed", 30, "the job to fail")
    failed = client.job(job_id).progress()
    assert failed.failure is not None and failed.failure.endswith(
        "; it cannot be completed: submit its documents again as a new job"
    )
    assert failed.done > 0 and rows(client, job_id)[1] >= failed.done  # results kept
    assert job_id in client.prune(older_than_days=1e-9)  # prune no longer skips it

    server = serve(**lease)
    key = {"Idempotency-Key": "upload-1"}
    job_id = kill_mid_upload(server, client, path, **key)
    wait_until(lambda: client.job(job_id).progress().state == "failed", 30, "the job to fail")
    assert (
        client.job(job_id)
        .progress()
        .failure.endswith("; send the same request again with its Idempotency-Key to complete it")
    )
    retried = upload(serve(**lease).http(), path, **key)
    assert retried.status_code == 200 and retried.json()["id"] == job_id, retried.text
    done = client.job(job_id).wait(timeout=180)
    assert (done.state, done.total, done.done) == ("finished", 20_000, 20_000)
    assert rows(client, job_id) == (20_000, 20_000)
