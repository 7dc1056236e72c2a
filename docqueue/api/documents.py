"""One document on the interactive lane: submit it and, optionally, wait a few
seconds for its result in the same request.

Concurrent submissions are written in groups (:mod:`docqueue.api.coalescing`): one
thread hop, one transaction and one Redis round trip for many requests.

A waiting request holds neither a thread nor a Redis connection: one subscription
per process wakes it (:mod:`docqueue.api.waiting`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from docqueue.api.coalescing import Coalescer
from docqueue.api.deps import (
    ClientDep,
    IdempotencyKey,
    Wait,
    checked_wait,
    existing_job,
    request_digest,
)
from docqueue.api.errors import ApiError, nothing_queued
from docqueue.api.models import known_model
from docqueue.api.schemas import DocumentCreate, DocumentOut
from docqueue.api.waiting import DoneNotices
from docqueue.producer.client import (
    Client,
    EnqueueStopped,
    JobHandle,
    ResultHandle,
    Submission,
    UnknownJob,
)

router = APIRouter(prefix="/api", tags=["documents"])

PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": DocumentOut, "description": "Not computed yet: poll or wait again"}
}


@router.post("/documents", summary="Submit one document; wait for its result", responses=PENDING)
async def submit_document(
    body: DocumentCreate,
    request: Request,
    response: Response,
    client: ClientDep,
    key: IdempotencyKey = None,
    wait: Wait = 0.0,
) -> DocumentOut:
    """Queued on the model's interactive lane, which workers serve first.  With
    `wait`, the answer comes when the result does (200), or after `wait` seconds
    with status pending (202): then poll `GET /api/documents/{job_id}`."""
    checked_wait(request, wait)
    submissions: Coalescer[Submitting, Submitted] = request.app.state.submissions
    submitted = await submissions((body, key))
    handle = submitted.handle
    if handle.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    elif wait == 0:  # just queued: pending, no need to read it back
        response.status_code = 202
        return DocumentOut(
            job_id=handle.job_id, status="pending", result=None, warning=submitted.warning
        )
    return await _answer(request, response, client, handle, wait)


#: One request to submit a document: its body and its Idempotency-Key.
Submitting = tuple[DocumentCreate, str | None]


@dataclass(frozen=True)
class Submitted:
    handle: ResultHandle
    #: Why no live worker runs it (from the last second's look at the workers).
    warning: str | None


def submitter(client: Client) -> Coalescer[Submitting, Submitted]:
    """What ``POST /api/documents`` submits through: concurrent requests are
    written in groups (see :mod:`docqueue.api.coalescing`)."""
    return Coalescer(partial(_submit_round, client))


def _submit_round(client: Client, requests: Sequence[Submitting]) -> list[Submitted | Exception]:
    """Submit the documents of many requests at once (Client.submit_each), each with
    its own outcome."""
    refused: dict[int, Exception] = {}
    submissions: list[Submission] = []
    for index, (body, key) in enumerate(requests):
        try:
            known_model(client, body.model, body.task)
        except ApiError as exc:
            refused[index] = exc
            continue
        submissions.append(_submission(body, key))
    handles = iter(client.submit_each(submissions))
    return [
        refused[index] if index in refused else _submitted(client, body, next(handles))
        for index, (body, _) in enumerate(requests)
    ]


def _submission(body: DocumentCreate, key: str | None) -> Submission:
    return Submission(
        body.text_for_client(),
        task=body.task,
        model=body.model,
        params=body.params,
        id=None if body.id is None else str(body.id),
        idempotency_key=key,
        input_digest=request_digest("document", body.model_dump(mode="json")) if key else None,
    )


def _submitted(
    client: Client, body: DocumentCreate, outcome: ResultHandle | Exception
) -> Submitted | Exception:
    if isinstance(outcome, EnqueueStopped):
        # Its job is in SQL but was never published: take it back, as POST
        # /api/jobs does, so that nothing stays pending that no worker will see.
        try:
            with contextlib.suppress(UnknownJob):
                client.job(outcome.job_id).delete()
        except Exception as exc:  # the database failed too: that is the answer
            return exc
        return nothing_queued(outcome)
    if isinstance(outcome, Exception):
        return outcome
    problem = client.coverage(body.model, body.task, fresh=False).problem()
    return Submitted(outcome, problem)


@router.get(
    "/documents/{job_id}", summary="A submitted document's result; wait for it", responses=PENDING
)
async def read_document(
    job_id: str, request: Request, response: Response, client: ClientDep, wait: Wait = 0.0
) -> DocumentOut:
    checked_wait(request, wait)
    job = await run_in_threadpool(existing_job, job_id, client)
    lane = (await run_in_threadpool(job.info)).lane
    if lane != "interactive":
        raise ApiError(
            404, f"job {job_id} is a job of many documents: read GET /api/jobs/{job_id}/results"
        )
    return await _answer(request, response, client, ResultHandle(client, job_id, 0), wait)


async def _answer(
    request: Request, response: Response, client: Client, handle: ResultHandle, wait: float
) -> DocumentOut:
    if wait > 0:
        notices: DoneNotices = request.app.state.notices
        await notices.wait(handle, wait)
    row = await run_in_threadpool(handle.read)
    if row is None:
        response.status_code = 202
        why = await run_in_threadpool(JobHandle(client, handle.job_id).why_waiting)
        return DocumentOut(
            job_id=handle.job_id, status="pending", result=None, warning=why[2:] or None
        )
    return DocumentOut(job_id=handle.job_id, status=row["status"], result=row)
