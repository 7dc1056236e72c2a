"""The OpenAI Batch API from Python, without HTTP: ``client.files`` and
``client.batches`` (docqueue.core.files and docqueue.core.batches), with a real
worker process, real Redis and SQL; and batches expiring by the sweep, with no one
reading them."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import test_api
from conftest import wait_until
from sqlalchemy import select, update
from test_api import GONE, register_gone_model

from docqueue.config import Settings
from docqueue.core import batches
from docqueue.core.batch_object import RequestCounts
from docqueue.core.errors import KeyReused, MadeFile, UnknownBatch, UnknownFile
from docqueue.db import make_engine
from docqueue.db.schema import Batch, Job
from docqueue.producer.client import Client

#: A real `docqueue serve` process, as tests/test_api.py starts it.
serve = test_api.serve
CLASSIFY = "/v1/docqueue/classify"


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def classify_line(custom_id: str, text: str, model: str = "tiny") -> dict[str, Any]:
    return {"custom_id": custom_id, "url": CLASSIFY, "body": {"model": model, "input": text}}


def past_its_window(settings: Settings, batch_id: str) -> None:
    """Move the batch's expires_at (24h after creation) back to a second ago."""
    engine = make_engine(settings.database())
    with engine.begin() as conn:
        conn.execute(update(Batch).where(Batch.id == batch_id).values(expires_at=time.time() - 1))
    engine.dispose()


def expired_and_cancelled(settings: Settings, batch_id: str) -> tuple[bool, bool]:
    """Whether the batch's row says expired, and its job cancelled (read in SQL, not
    through the core, which would sweep)."""
    engine = make_engine(settings.database())
    with engine.connect() as conn:
        found = conn.execute(
            select(Batch.expired_at, Job.cancelled_at)
            .join(Job, Job.id == Batch.job_id)
            .where(Batch.id == batch_id)
        ).one()
    engine.dispose()
    return found[0] is not None, found[1] is not None


def test_a_python_caller_runs_a_batch_from_upload_to_output_lines(
    client: Client, start_worker, tiny_classifier
):
    start_worker({"tiny": tiny_classifier})
    lines = [classify_line(f"c{i}", f"text number {i}") for i in range(3)] + [b"{not json"]
    data = jsonl(lines)
    uploaded = client.files.create(("c.jsonl", data), purpose="batch")
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == ("c.jsonl", len(data), "batch")
    assert b"".join(client.files.content(uploaded.id)) == data
    assert client.files.retrieve(uploaded.id).filename == "c.jsonl"
    assert [f.id for f in client.files.list(purpose="batch").data] == [uploaded.id]

    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=CLASSIFY, metadata={"team": "support"}
    )
    assert batch.status in ("in_progress", "completed")  # a fast worker may be done
    assert (batch.model, batch.metadata, batch.completion_window) == (
        "tiny",
        {"team": "support"},
        "24h",
    )
    assert [e["line"] for e in batch.errors] == [4] and batch.request_counts.total == 4

    wait_until(lambda: client.batches.retrieve(batch.id).status == "completed", 60, "the batch")
    done = client.batches.retrieve(batch.id)
    assert done.request_counts == RequestCounts(total=4, completed=3, failed=1)
    assert done.completed_at is not None and done.expired_at is None

    output = [json.loads(line) for line in client.batches.output_lines(batch.id)]
    assert [line["custom_id"] for line in output] == ["c0", "c1", "c2"]
    bodies = [line["response"]["body"] for line in output]
    assert {b["object"] for b in bodies} == {"docqueue.classification"}
    assert all(isinstance(b["label"], str) for b in bodies)
    [error] = [json.loads(line) for line in client.batches.error_lines(batch.id)]
    assert error["custom_id"] is None and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["message"].startswith("line 4: malformed JSON")

    # the same lines as the batch's output and error files
    assert done.output_file_id is not None and done.error_file_id is not None
    made = b"".join(client.files.content(done.output_file_id)).decode().splitlines()
    assert [json.loads(line) for line in made] == output
    assert client.files.retrieve(done.error_file_id).purpose == "batch_output"
    with pytest.raises(MadeFile):
        client.files.delete(done.output_file_id)

    page = client.batches.list(limit=1)
    assert [b.id for b in page.data] == [batch.id] and not page.has_more
    assert client.batches.cancel(batch.id).status == "completed"  # finished: unchanged

    # the input file can go: the batch's lines were all read when it was created
    client.files.delete(uploaded.id)
    with pytest.raises(UnknownFile):
        client.files.retrieve(uploaded.id)
    assert client.batches.retrieve(batch.id).input_file_id == uploaded.id
    with pytest.raises(UnknownBatch):
        client.batches.retrieve("batch_nope")


def test_python_idempotency_keys_give_the_same_file_and_batch(client: Client, settings):
    register_gone_model(settings)  # accepted, never run
    data = jsonl([classify_line("a", "t", model=GONE)])
    first = client.files.create(data, filename="a.jsonl", idempotency_key="file-1")
    again = client.files.create(("a.jsonl", data), idempotency_key="file-1")
    assert again.id == first.id
    with pytest.raises(KeyReused):
        client.files.create(("a.jsonl", data + data), idempotency_key="file-1")

    batch = client.batches.create(
        input_file_id=first.id, endpoint=CLASSIFY, idempotency_key="batch-1"
    )
    replayed = client.batches.create(
        input_file_id=first.id, endpoint=CLASSIFY, idempotency_key="batch-1"
    )
    assert (replayed.id, replayed.replayed, batch.replayed) == (batch.id, True, False)
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    [line] = [json.loads(line) for line in client.batches.error_lines(batch.id)]
    assert line["error"]["code"] == "batch_cancelled"


@pytest.mark.parametrize("keep_bytes", [batches.KEEP_BYTES, 10])
def test_the_lines_before_the_first_that_can_run_are_read_once_or_again(
    client: Client, settings, monkeypatch, keep_bytes
):
    """Creating a batch reads its file once, keeping the lines read while looking
    for the first that can run; past KEEP_BYTES of them it reads the file again.
    Either way every line is a document, in order."""
    monkeypatch.setattr(batches, "KEEP_BYTES", keep_bytes)
    register_gone_model(settings)
    good = [classify_line(f"g{i}", "t", model=GONE) for i in range(2)]
    lines = [b"{bad", classify_line("other", "t", model=""), b"[]", *good, b"{bad again"]
    uploaded = client.files.create(("l.jsonl", jsonl(lines)))
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CLASSIFY)
    assert [e["line"] for e in batch.errors] == [1, 2, 3, 6]
    assert batch.request_counts.total == 6
    client.batches.cancel(batch.id)
    errors = [json.loads(line) for line in client.batches.error_lines(batch.id)]
    assert [line["custom_id"] for line in errors] == [None, "other", None, "g0", "g1", None]


def test_a_batch_past_its_window_is_expired_by_the_sweep_with_no_one_reading_it(
    client: Client, settings
):
    register_gone_model(settings)  # accepted, never run: the batch stays in progress
    uploaded = client.files.create(("e.jsonl", jsonl([classify_line("e", "t", model=GONE)])))
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CLASSIFY)
    assert batch.status == "in_progress" and batch.expires_at == batch.created_at + 24 * 3600
    assert client.batches.expire_due() == []  # not due yet
    past_its_window(settings, batch.id)

    assert client.batches.expire_due() == [batch.id]
    assert expired_and_cancelled(settings, batch.id) == (True, True)
    assert client.batches.expire_due() == []  # once
    expired = client.batches.retrieve(batch.id)
    assert (expired.status, expired.cancelled_at) == ("expired", None)
    [line] = [json.loads(line) for line in client.batches.error_lines(batch.id)]
    assert line["error"]["code"] == "batch_expired"


def test_the_api_server_expires_batches_that_no_one_reads(serve, client: Client, settings):
    """The server sweeps every DOCQUEUE_API_BATCH_SWEEP_INTERVAL seconds: a batch
    past its window expires with no request for it."""
    register_gone_model(settings)
    serve(DOCQUEUE_API_BATCH_SWEEP_INTERVAL="0.2")
    uploaded = client.files.create(("e.jsonl", jsonl([classify_line("e", "t", model=GONE)])))
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CLASSIFY)
    time.sleep(0.5)  # swept meanwhile: not due
    assert expired_and_cancelled(settings, batch.id) == (False, False)
    past_its_window(settings, batch.id)
    wait_until(lambda: expired_and_cancelled(settings, batch.id) == (True, True), 30, "the sweep")
