"""Single documents submitted together (coalesced into rounds): ``Client.submit_each`` and
the ``POST /api/documents`` that stands on it keep every guarantee of one
``submit`` per document: one job and one message each, idempotency keys, digests,
and an error of its own for each submission that cannot be taken."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
import test_api
from sqlalchemy import func, select, text
from test_api import GONE, error_of, job_ids, register_gone_model

from docqueue.api.coalescing import Coalescer
from docqueue.db.schema import Item, Job
from docqueue.params import InvalidParams
from docqueue.producer.client import Client, ResultHandle, Submission
from docqueue.producer.documents import InvalidDocument
from docqueue.protocol import queue_name

REFUSED = "the database refuses this one"
serve = test_api.serve  # the fixture: a real `docqueue serve`


def queued_jobs(client: Client, model: str) -> list[str]:
    """The job of every message on the model's interactive queue."""
    entries = client.redis.lrange(queue_name("classify", model, "interactive"), 0, -1)
    jobs = []
    for entry in entries:
        envelope = json.loads(entry)
        assert envelope["properties"]["body_encoding"] == "base64"
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        jobs.append(args[0]["job"])
    return jobs


def one_item_each(client: Client, job_ids: Sequence[str]) -> None:
    with client.db.connect() as conn:
        rows = conn.execute(
            select(Item.job_id, func.count(), func.min(Item.digest))
            .where(Item.job_id.in_(job_ids))
            .group_by(Item.job_id)
        ).all()
    assert {row[0] for row in rows} == set(job_ids)
    assert all(row[1] == 1 and row[2] for row in rows)  # one document, with its digest


def test_a_group_writes_one_job_and_one_message_per_document_and_refuses_each_alone(client):
    good = [Submission(f"document {i}", "classify", "m") for i in range(3)]
    keyed = Submission("keyed", "classify", "m", idempotency_key="k", input_digest="d")
    outcomes = client.submit_each(
        [
            good[0],
            Submission("   ", "classify", "m"),
            good[1],
            keyed,
            Submission("x", "classify", "m", {"no_such_param": 1}),
            keyed,
            good[2],
        ]
    )

    handles = [o for o in outcomes if isinstance(o, ResultHandle)]
    assert [type(o) for o in outcomes] == [
        ResultHandle,
        InvalidDocument,
        ResultHandle,
        ResultHandle,
        InvalidParams,
        ResultHandle,
        ResultHandle,
    ]
    assert str(outcomes[1]) == "document is whitespace only"
    assert "no_such_param" in str(outcomes[4])
    first, retry = outcomes[3], outcomes[5]
    assert isinstance(first, ResultHandle) and isinstance(retry, ResultHandle)
    assert retry.job_id == first.job_id and retry.replayed and not first.replayed
    jobs = sorted({h.job_id for h in handles})
    assert len(jobs) == 4
    one_item_each(client, jobs)
    assert sorted(summary.job.id for summary in client.jobs(interactive=True)) == jobs
    # The retry re-publishes its pending document (as submit does); every other
    # document is one message.
    queued = queued_jobs(client, "m")
    assert sorted(set(queued)) == jobs and len(queued) == 5


@pytest.fixture
def refusing_database(client: Client) -> Iterator[Client]:
    """The client's database refuses documents whose text is :data:`REFUSED` (a
    trigger: a real refusal by the database, dropped afterwards)."""
    postgres = client.db.dialect.name == "postgresql"
    if postgres:
        create = [
            "CREATE FUNCTION dq_test_refuse() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.text = '{REFUSED}' THEN RAISE EXCEPTION 'refused by a trigger'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER dq_test_refuse BEFORE INSERT ON dq_items FOR EACH ROW "
            "EXECUTE FUNCTION dq_test_refuse()",
        ]
        drop = ["DROP TRIGGER dq_test_refuse ON dq_items", "DROP FUNCTION dq_test_refuse()"]
    else:
        create = [
            f"CREATE TRIGGER dq_test_refuse BEFORE INSERT ON dq_items WHEN NEW.text = "
            f"'{REFUSED}' BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        ]
        drop = ["DROP TRIGGER dq_test_refuse"]
    with client.db.begin() as conn:
        for statement in create:
            conn.execute(text(statement))
    try:
        yield client
    finally:
        with client.db.begin() as conn:
            for statement in drop:
                conn.execute(text(statement))


def test_a_document_the_database_refuses_fails_alone_and_its_group_is_written(
    refusing_database,
):
    client = refusing_database
    outcomes = client.submit_each(
        [Submission(t, "classify", "m") for t in ("before", REFUSED, "after")]
    )

    assert isinstance(outcomes[1], Exception) and "refused by a trigger" in str(outcomes[1])
    handles = [outcomes[0], outcomes[2]]
    assert all(isinstance(h, ResultHandle) for h in handles)
    jobs = sorted(h.job_id for h in handles if isinstance(h, ResultHandle))
    one_item_each(client, jobs)
    with client.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Job)).scalar() == 2
    assert sorted(queued_jobs(client, "m")) == jobs


def test_concurrent_requests_are_grouped_each_with_its_own_answer(serve, settings):
    register_gone_model(settings)
    server = serve()
    good = {"task": "classify", "model": GONE, "text": "a document"}
    requests = (
        [(good, {"Idempotency-Key": "same"})] * 8
        + [({**good, "text": f"document {i}"}, {}) for i in range(8)]
        + [({**good, "model": "nosuchmodel"}, {})] * 4
        + [({**good, "text": " "}, {})] * 4
    )
    clients = [server.http() for _ in requests]

    def post(index: int):  # noqa: ANN202
        body, headers = requests[index]
        return clients[index].post("/api/documents", json=body, headers=headers)

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(post, range(len(requests))))

    keyed, plain, unknown, blank = answers[:8], answers[8:16], answers[16:20], answers[20:]
    assert [a.status_code for a in keyed + plain] == [202] * 16, [a.text for a in answers]
    assert len({a.json()["job_id"] for a in keyed}) == 1
    assert sum("Idempotent-Replayed" not in a.headers for a in keyed) == 1
    assert len({a.json()["job_id"] for a in plain}) == 8
    for answer in plain:
        document = answer.json()
        assert document["status"] == "pending" and document["result"] is None
        assert document["warning"].startswith(f"no live worker serves model {GONE} (last seen ")
    for answer in unknown:
        assert error_of(answer, 422)["param"] == "model"
    for answer in blank:
        assert error_of(answer, 422)["message"] == "document is whitespace only"
    created = {a.json()["job_id"] for a in keyed + plain}
    assert sorted(job_ids(server.http())) == sorted(created)


def test_calls_that_arrive_while_a_group_is_written_form_the_next_group():
    writing = threading.Event()
    release = threading.Event()
    groups: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int | Exception]:
        groups.append(list(items))
        if len(groups) == 1:
            writing.set()
            release.wait(10)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    async def main() -> list[int | BaseException]:
        coalesce: Coalescer[int, int] = Coalescer(write, max_round=4, writers=1)
        first = asyncio.ensure_future(coalesce(0))
        await asyncio.to_thread(writing.wait, 10)  # the lone first call is written at once
        rest = [asyncio.ensure_future(coalesce(i)) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(main())

    assert groups == [[0], [1, 2, 3, 4], [5, 6]]
    assert outcomes[0::2] == [0, 20, 40, 60]
    assert [str(o) for o in outcomes[1::2]] == ["odd 1", "odd 3", "odd 5"]
