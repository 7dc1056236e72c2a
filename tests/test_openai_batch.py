"""The OpenAI-compatible Batch API as an OpenAI SDK user meets it: the official
``openai`` package against a real ``docqueue serve``, real workers, real Redis and
SQL (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
import openai
import pytest
import test_api
from conftest import wait_until
from sqlalchemy import select, update
from test_api import GONE, TOKEN, register_gone_model
from transformers import AutoTokenizer

from docqueue.config import Settings
from docqueue.db import make_engine
from docqueue.db.files import CHUNK_BYTES
from docqueue.db.schema import Batch, Item, Job, StoredFile

#: A real `docqueue serve` process, as tests/test_api.py starts it.
serve = test_api.serve
#: The docqueue extensions, which the SDK's types do not list.
CLASSIFY: Any = "/v1/docqueue/classify"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, sample_texts) -> str:
    from docqueue.testing import build_causal_lm

    return str(build_causal_lm(tmp_path_factory.mktemp("tiny-llama"), sample_texts, kind="llama"))


def sdk(server: Any, token: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=60)


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def chat_line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    body = {"model": "chat", "messages": messages, "max_tokens": 4, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> Any:
    found: list[Any] = []

    def done() -> bool:
        found[:] = [client.batches.retrieve(batch_id)]
        return found[0].status not in ("validating", "in_progress", "finalizing", "cancelling")

    wait_until(done, timeout, f"batch {batch_id}")
    return found[0]


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def counts(settings: Settings) -> tuple[int, int, int]:
    """Jobs, batches and files in the database."""
    engine = make_engine(settings.database())
    with engine.connect() as conn:
        jobs, batches, files = (
            len(conn.execute(table.__table__.select()).all()) for table in (Job, Batch, StoredFile)
        )
    engine.dispose()
    return jobs, batches, files


def test_a_batch_runs_every_line_and_names_the_ones_that_cannot(
    serve, start_worker, tiny_classifier, tiny_llama
):
    start_worker({"chat": tiny_llama, "tiny": tiny_classifier})
    server = serve()
    client = sdk(server)

    good = [chat_line(f"req-{i}", f"Question number {i}?") for i in range(6)]
    lines: list[Any] = [*good[:3], b"{not json", chat_line("hot", "Hi", frequency_penalty=1.5)]
    lines += [chat_line("other-model", "Hi", model="tiny"), chat_line("params", "Hi", max_tokens=9)]
    lines += [chat_line("x" * 600, "Hi")]  # an id longer than docqueue keeps
    lines += good[3:]
    uploaded = client.files.create(file=("chat.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    assert client.files.retrieve(uploaded.id).filename == "chat.jsonl"
    assert client.files.content(uploaded.id).content == jsonl(lines)

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "support"},
    )
    # a fast worker may finish the batch before create returns
    assert batch.status in ("in_progress", "completed")
    assert batch.metadata == {"team": "support"}
    assert batch.request_counts is not None and batch.request_counts.total == len(lines)
    assert batch.errors is not None and [e.line for e in batch.errors.data or []] == [4, 5, 6, 7, 8]

    finished = wait_batch(client, batch.id)
    assert finished.status == "completed" and finished.completed_at is not None
    assert finished.request_counts.model_dump() == {"total": 11, "completed": 6, "failed": 5}
    output = lines_of(client, finished.output_file_id)
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(6)]
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        completion = openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
        assert completion.object == "chat.completion" and completion.model == "chat"
        assert isinstance(completion.choices[0].message.content, str)
        assert completion.choices[0].finish_reason == "length"  # 4 tokens, as asked
        assert completion.usage is not None and completion.usage.completion_tokens == 4
    # the body the synchronous endpoint answers for the same request, usage included
    first = chat_line("req-0", "Question number 0?")["body"]
    sync = server.http().post("/v1/chat/completions", json=first).json()
    body = output[0]["response"]["body"]
    assert (body["choices"], body["usage"]) == (sync["choices"], sync["usage"])
    template: Any = AutoTokenizer.from_pretrained(tiny_llama).apply_chat_template(
        first["messages"], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    template = template["input_ids"]
    assert body["usage"]["prompt_tokens"] == len(template)

    errors = lines_of(client, finished.error_file_id)
    assert [line["custom_id"] for line in errors] == [None, "hot", "other-model", "params", None]
    messages = [line["response"]["body"]["error"]["message"] for line in errors]
    assert messages[0].startswith("line 4: malformed JSON")
    assert messages[1].startswith("line 5: body.frequency_penalty=1.5 is not supported")
    assert messages[2].startswith("line 6: body.model 'tiny' differs from the batch's model")
    assert messages[3].startswith("line 7: parameters")
    assert messages[4].startswith("line 8: id") and "512" in messages[4]
    assert {line["response"]["status_code"] for line in errors} == {400}
    assert client.files.retrieve(finished.output_file_id).purpose == "batch_output"

    classify = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/docqueue/classify",
            "body": {"model": "tiny", "input": f"text {i}"},
        }
        for i in range(3)
    ]
    second = client.files.create(file=("c.jsonl", io.BytesIO(jsonl(classify))), purpose="batch")
    created = client.batches.create(
        input_file_id=second.id, endpoint=CLASSIFY, completion_window="24h"
    )
    done = wait_batch(client, created.id)
    bodies = [line["response"]["body"] for line in lines_of(client, done.output_file_id)]
    assert [b["object"] for b in bodies] == ["docqueue.classification"] * 3
    assert all(isinstance(b["label"], str) for b in bodies) and done.error_file_id is None

    listed = client.batches.list(limit=1)
    assert [b.id for b in listed.data] == [created.id] and listed.has_more
    assert [b.id for b in client.batches.list()] == [created.id, batch.id]  # the cursor pages


def test_a_declared_model_is_accepted_before_any_worker_served_it(
    serve, start_worker, settings, tiny_classifier
):
    """Workers scaled to zero: the API's DOCQUEUE_MODELS names the model, so the first
    batch and job are queued (not refused), and a worker started later runs them.  A
    model neither declared nor ever served is still refused, naming those that are."""
    server = serve(DOCQUEUE_MODELS=json.dumps({"sentiment": tiny_classifier}))
    client, http = sdk(server), server.http()
    line = {"custom_id": "r0", "url": CLASSIFY, "body": {"model": "sentiment", "input": "ok"}}
    uploaded = client.files.create(file=("a.jsonl", jsonl([line])), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=CLASSIFY, completion_window="24h"
    )
    assert batch.status == "in_progress"
    created = http.post(
        "/api/jobs", json={"task": "classify", "model": "sentiment", "documents": ["a", "b"]}
    )
    assert created.status_code == 201, created.text
    assert "no live worker serves model sentiment" in created.json()["warning"]

    refused = test_api.error_of(
        http.post("/api/jobs", json={"task": "classify", "model": "nope", "documents": ["a"]}),
        422,
    )
    assert refused["param"] == "model" and refused["message"] == (
        "unknown model nope: no worker has served it and DOCQUEUE_MODELS does not declare "
        "it (known models: sentiment)"
    )
    nope = {**line, "body": {"model": "nope", "input": "ok"}}
    other = client.files.create(file=("b.jsonl", jsonl([nope])), purpose="batch")
    with pytest.raises(openai.UnprocessableEntityError) as batch_refused:
        client.batches.create(input_file_id=other.id, endpoint=CLASSIFY, completion_window="24h")
    assert "DOCQUEUE_MODELS does not declare it (known models: sentiment)" in (
        batch_refused.value.message
    )

    start_worker({"sentiment": tiny_classifier})  # the worker an autoscaler starts
    assert wait_batch(client, batch.id).status == "completed"
    job = test_api.wait_finished(http, created.json()["id"])
    assert job["progress"]["done"] == 2


def test_a_cancelled_batch_lists_its_lines_in_the_error_file(serve, settings):
    register_gone_model(settings)  # accepted, never run: nothing is computed
    client = sdk(serve())
    lines = [
        {
            "custom_id": f"x{i}",
            "url": "/v1/docqueue/classify",
            "body": {"model": GONE, "input": "t"},
        }
        for i in range(4)
    ]
    uploaded = client.files.create(file=("x.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=CLASSIFY, completion_window="24h"
    )
    assert batch.status == "in_progress"
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert cancelled.output_file_id is None
    errors = lines_of(client, cancelled.error_file_id)
    assert [line["custom_id"] for line in errors] == ["x0", "x1", "x2", "x3"]
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert all(line["response"] is None for line in errors)
    files_are_listed_paged_and_deleted(client)  # this server's start serves the three
    batch_past_its_window_expires(client, settings)


PAD = "x" * 420


def test_a_long_file_opening_with_a_byte_order_mark_keeps_every_line_in_order(serve, settings):
    """2,500 lines over 1 MiB (stored in two chunks, a line cut between them), a byte
    order mark before the first, a bad line in the middle: every line is one document,
    in the file's order, the first read past its mark, the bad one named by number."""
    register_gone_model(settings)  # accepted, never run
    client = sdk(serve())
    lines: list[Any] = [
        {"custom_id": f"r{i}", "url": CLASSIFY, "body": {"model": GONE, "input": f"text {i} {PAD}"}}
        for i in range(2500)
    ]
    lines[1500] = {**lines[1500], "url": "/v1/embeddings"}  # not the batch's endpoint
    data = b"\xef\xbb\xbf" + jsonl(lines)
    assert len(data) > CHUNK_BYTES
    uploaded = client.files.create(file=("bom.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=CLASSIFY, completion_window="24h"
    )
    assert batch.request_counts is not None and batch.request_counts.total == 2500
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.line, e.code) for e in batch.errors.data] == [(1501, "invalid_request")]
    engine = make_engine(settings.database())
    with engine.connect() as conn:
        rows = conn.execute(
            select(Item.seq, Item.user_id, Item.text, Item.status)
            .join(Job, Job.id == Item.job_id)
            .where(Job.name == batch.id)
            .order_by(Item.seq)
        ).all()
    engine.dispose()
    assert [(seq, user_id) for seq, user_id, _, _ in rows] == [(i, f"r{i}") for i in range(2500)]
    assert rows[0].text == f"text 0 {PAD}" and rows[2499].text == f"text 2499 {PAD}"
    assert [seq for seq, _, _, status in rows if status != "pending"] == [1500]
    client.batches.cancel(batch.id)


def test_bad_requests_are_clear_4xx_or_failed_batches_and_create_no_job(serve, settings):
    register_gone_model(settings)
    server = serve(DOCQUEUE_API_MAX_UPLOAD_BYTES="4096")
    client = sdk(server)
    line = {"custom_id": "a", "url": "/v1/docqueue/classify", "body": {"model": GONE, "input": "t"}}

    with pytest.raises(openai.AuthenticationError):
        sdk(server, "wrong-token-0123456789abcdef").files.create(
            file=("a.jsonl", jsonl([line])), purpose="batch"
        )
    with pytest.raises(openai.APIStatusError) as big:
        client.files.create(file=("big.jsonl", jsonl([line] * 100)), purpose="batch")
    assert big.value.status_code == 413 and "4,096 bytes" in big.value.message
    with pytest.raises(openai.UnprocessableEntityError) as purpose:
        client.files.create(file=("a.jsonl", jsonl([line])), purpose="fine-tune")
    assert "purpose 'fine-tune'" in purpose.value.message

    uploaded = client.files.create(file=("a.jsonl", jsonl([line])), purpose="batch")
    unknown_model = {**line, "body": {"model": "nosuch", "input": "t"}}
    other = client.files.create(file=("b.jsonl", jsonl([unknown_model])), purpose="batch")
    bad = client.files.create(file=("c.jsonl", jsonl([b"[1, 2", b"7"])), purpose="batch")
    before = counts(settings)

    with pytest.raises(openai.UnprocessableEntityError) as endpoint:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/moderations", completion_window="24h"
        )
    assert "endpoint '/v1/moderations' is not supported" in endpoint.value.message
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-" + "0" * 32, endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nosuch")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nosuch")
    assert counts(settings) == before

    # a model no worker has served: a 4xx naming it, nothing created
    with pytest.raises(openai.APIStatusError) as model:
        client.batches.create(input_file_id=other.id, endpoint=CLASSIFY, completion_window="24h")
    assert 400 <= model.value.status_code < 500
    assert "unknown model nosuch" in model.value.message
    assert counts(settings) == before
    # as OpenAI's validation: a batch whose every line is unreadable failed, saying why
    unreadable = client.batches.create(
        input_file_id=bad.id, endpoint=CLASSIFY, completion_window="24h"
    )
    assert unreadable.errors is not None and unreadable.status == "failed"
    assert [(e.line, str(e.message)[:27]) for e in unreadable.errors.data or []] == [
        (1, "line 1: malformed JSON (Exp"),
        (2, "line 2: a line is a JSON ob"),
    ]
    assert (unreadable.in_progress_at, unreadable.output_file_id) == (None, None)
    assert unreadable.failed_at is not None and unreadable.failed_at >= unreadable.created_at
    assert client.batches.retrieve(unreadable.id).status == "failed"
    assert client.batches.cancel(unreadable.id).status == "failed"  # nothing to cancel
    assert [b.id for b in client.batches.list()] == [unreadable.id]
    assert counts(settings) == (before[0], before[1] + 1, before[2])

    raw = httpx.post(
        f"{server.url}/v1/batches",
        json={"input_file_id": uploaded.id, "endpoint": "/v1/embeddings"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert raw.status_code == 422 and raw.json()["error"]["param"] == "completion_window"
    assert TOKEN not in server.log()


def test_an_idempotency_key_gives_the_same_file_and_batch(serve, settings):
    register_gone_model(settings)
    client = sdk(serve())
    line = {"custom_id": "a", "url": "/v1/docqueue/classify", "body": {"model": GONE, "input": "t"}}
    key = {"Idempotency-Key": "k-1"}
    files = [
        client.files.create(file=("a.jsonl", jsonl([line])), purpose="batch", extra_headers=key)
        for _ in range(2)
    ]
    assert files[0].id == files[1].id
    with pytest.raises(openai.UnprocessableEntityError):
        client.files.create(
            file=("a.jsonl", jsonl([line, line])), purpose="batch", extra_headers=key
        )
    batches = [
        client.batches.create(
            input_file_id=files[0].id,
            endpoint=CLASSIFY,
            completion_window="24h",
            extra_headers={"Idempotency-Key": "b-1"},
        )
        for _ in range(2)
    ]
    assert batches[0].id == batches[1].id
    assert counts(settings)[:2] == (1, 1)


def test_a_line_nested_too_deep_is_one_line_error():
    """A line nested thousands deep is an error naming it, not a RecursionError."""
    from docqueue.formats.batch_lines import LineError, _custom_id, parse

    line = b'{"custom_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(LineError, match="malformed JSON"):
        parse(line, "/v1/chat/completions")
    assert _custom_id(line) is None


def files_are_listed_paged_and_deleted(client: openai.OpenAI) -> None:
    """Through the SDK: GET /v1/files newest first or oldest first, paged with
    after (as the SDK's iteration does), by purpose; DELETE /v1/files/{id}."""
    before = [f.id for f in client.files.list()]
    line = {"custom_id": "a", "url": "/v1/docqueue/classify", "body": {"model": GONE, "input": "t"}}
    ids = [
        client.files.create(file=(f"{n}.jsonl", jsonl([line])), purpose="batch").id for n in "abc"
    ]
    listed = client.files.list()
    assert [f.id for f in listed.data] == ids[::-1] + before and not listed.has_more
    assert [f.filename for f in listed.data[:3]] == ["c.jsonl", "b.jsonl", "a.jsonl"]
    oldest = before[::-1] + ids
    first = client.files.list(order="asc", limit=2)
    assert [f.id for f in first.data] == oldest[:2] and first.has_more
    assert [f.id for f in client.files.list(order="asc", limit=1)] == oldest  # the SDK pages
    assert [f.id for f in client.files.list(purpose="batch", after=ids[2])] == [
        *ids[1::-1],
        *before,
    ]
    assert client.files.list(purpose="batch_output").data == []

    batch = client.batches.create(input_file_id=ids[0], endpoint=CLASSIFY, completion_window="24h")
    deleted = client.files.delete(ids[0])  # the batch's lines are all queued already
    assert (deleted.id, deleted.object, deleted.deleted) == (ids[0], "file", True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(ids[0])
    with pytest.raises(openai.NotFoundError, match="no file"):
        client.files.delete(ids[0])
    assert [f.id for f in client.files.list()] == ids[:0:-1] + before
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.input_file_id == ids[0] and cancelled.request_counts is not None
    assert cancelled.request_counts.total == 1
    assert (
        cancelled.error_file_id is not None and len(lines_of(client, cancelled.error_file_id)) == 1
    )
    with pytest.raises(openai.ConflictError, match="delete the job"):
        client.files.delete(cancelled.error_file_id)


def batch_past_its_window_expires(client: openai.OpenAI, settings: Settings) -> None:
    """A batch still running at expires_at (24h after creation; moved back here)
    expires: its lines not yet run are in the error file as batch_expired."""
    line = {"custom_id": "e", "url": "/v1/docqueue/classify", "body": {"model": GONE, "input": "t"}}
    uploaded = client.files.create(file=("e.jsonl", jsonl([line])), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=CLASSIFY, completion_window="24h"
    )
    assert batch.status == "in_progress" and batch.expires_at == batch.created_at + 24 * 3600
    engine = make_engine(settings.database())
    with engine.begin() as conn:
        conn.execute(update(Batch).where(Batch.id == batch.id).values(expires_at=time.time() - 1))
    engine.dispose()
    expired = client.batches.retrieve(batch.id)
    assert (expired.status, expired.cancelled_at, expired.output_file_id) == ("expired", None, None)
    assert expired.expired_at is not None and expired.expired_at >= batch.created_at
    [error] = lines_of(client, expired.error_file_id)
    assert (error["custom_id"], error["error"]["code"]) == ("e", "batch_expired")


def test_a_file_held_by_a_batch_being_created_is_deleted_only_after_it(database_url):
    """What keeps a batch from being created from a file deleted half way through
    its reading: the creation holds the file's row while it adds the batch, and a
    delete waits for it (or, deleted first, the creation sees it gone)."""
    import hashlib
    import threading

    from docqueue.db import files as store
    from docqueue.db import migrate

    engine = make_engine(database_url)
    migrate(engine)
    info = store.FileInfo(
        id="file-" + "1" * 32, purpose="batch", filename="a", bytes=0, created_at=0
    )
    with engine.begin() as conn:
        store.store_file(conn, info, io.BytesIO(b"line\n"), hashlib.sha256(), 100)
    deleted: list[bool] = []

    def delete() -> None:
        with engine.begin() as conn:
            deleted.append(store.delete_file(conn, info.id))

    with engine.begin() as conn:
        assert store.hold_file(conn, info.id)
        deleter = threading.Thread(target=delete)
        deleter.start()
        deleter.join(0.5)
        assert deleted == []  # waiting for the creation to end
    deleter.join(30)
    assert deleted == [True]
    with engine.begin() as conn:
        assert not store.hold_file(conn, info.id)
    engine.dispose()
