"""OpenAI-compatible batches: create one from an uploaded file, read it, list them,
cancel it.  A batch is an ordinary docqueue job underneath (created with
:meth:`Client.submit_many`: durable, resumable, one result per line); the batch
row adds what OpenAI's batch object says besides the job's own state."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import Field, StringConstraints

from docqueue.api.batch_lines import (
    ENDPOINTS,
    Plan,
    Reader,
    endpoint_problem,
    first_plan,
    split_lines,
)
from docqueue.api.batch_object import BatchList, BatchOut, batch_out
from docqueue.api.deps import ClientDep, IdempotencyKey, request_digest
from docqueue.api.errors import ApiError
from docqueue.api.jobs import REPLAYED
from docqueue.api.models import known_model
from docqueue.api.openai_files import uploaded_file
from docqueue.api.schemas import NoNul, _Strict
from docqueue.db import files as store
from docqueue.producer.client import Client, UnknownJob

router = APIRouter(prefix="/v1", tags=["openai-batch"])

#: The only completion window (OpenAI's too); a batch not finished by then expires.
WINDOW_SECONDS = {"24h": 24 * 3600.0}
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64), NoNul]
MetadataValue = Annotated[str, StringConstraints(max_length=512), NoNul]


class BatchCreate(_Strict):
    input_file_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    """A file uploaded with purpose batch."""
    endpoint: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    """/v1/embeddings, /v1/chat/completions, /v1/completions, /v1/docqueue/classify or
    /v1/docqueue/summarize."""
    completion_window: Literal["24h"]
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    output_expires_after: dict[str, Any] | None = None
    """Accepted for the SDKs' sake; docqueue keeps results until the job is pruned."""


@router.post("/batches", summary="Create a batch from an uploaded file, as OpenAI's")
def create_batch(
    body: BatchCreate, response: Response, client: ClientDep, key: IdempotencyKey = None
) -> BatchOut:
    """Every line of the file is in SQL and queued when this returns.  The file's
    lines must all name the same model and parameters; a line that cannot run gets
    a line in the error file that names it.  A file with no line that can run gives a
    batch that has failed (status failed, errors saying why), as OpenAI's validation
    does.  A model no worker has served is a 4xx naming it, nothing created: the
    caller learns of the typo at once instead of polling a batch to find it."""
    if problem := endpoint_problem(body.endpoint):
        raise ApiError(422, problem, "endpoint")
    info = _input_file(client, body.input_file_id)
    cap = client.settings.max_new_tokens_cap
    plan = first_plan(_lines(client, info.id), body.endpoint, cap)
    if isinstance(plan, list):
        return batch_out(client, _failed(client, body, info, plan))
    known_model(client, plan.model, ENDPOINTS[body.endpoint])
    digest = request_digest("batch", body.model_dump(mode="json")) if key else None
    batch, replayed = _create(client, body, info, plan, key, digest)
    if replayed:
        response.headers[REPLAYED] = "true"
    return batch_out(client, batch)


def _failed(
    client: Client, body: BatchCreate, info: store.FileInfo, errors: list[dict[str, Any]]
) -> store.BatchInfo:
    """A batch that failed validation: kept, with why, and without a job."""
    batch = _batch_row(None, body, info, {}, errors)
    with client.db.begin() as conn:
        store.add_batch(conn, batch)
    return batch


def _input_file(client: Client, file_id: str) -> store.FileInfo:
    info = uploaded_file(client, file_id)
    if info is None:
        raise ApiError(404, f"input_file_id: no file {file_id!r}", "input_file_id")
    if info.purpose != "batch":
        raise ApiError(
            422, f"file {file_id} has purpose {info.purpose}, not batch", "input_file_id"
        )
    return info


def _lines(client: Client, file_id: str) -> Any:
    return split_lines(store.file_chunks(client.db.connect, file_id))


def _create(
    client: Client,
    body: BatchCreate,
    info: store.FileInfo,
    plan: Plan,
    key: str | None,
    digest: str | None,
) -> tuple[store.BatchInfo, bool]:
    """Queue the lines as a job, then add the batch row; a failure part way deletes
    the job (nothing half-created)."""
    job_id = uuid.uuid4().hex
    settings = client.settings
    reader = Reader(body.endpoint, plan, settings.max_new_tokens_cap, settings.max_document_chars)
    try:
        handle = client.submit_many(
            reader.records(_lines(client, info.id)),
            task=ENDPOINTS[body.endpoint],
            model=plan.model,
            params=plan.params,
            name=f"batch_{job_id}",
            source=info.filename,
            job_id=job_id,
            idempotency_key=key,
            input_digest=digest,
        )
        with client.db.begin() as conn:
            batch = store.batch_of_job(conn, handle.id)
            if batch is None:
                if not store.hold_file(conn, info.id):
                    raise ApiError(
                        409,
                        f"input_file_id: file {info.id} was deleted while the batch was "
                        "created from it; nothing was created",
                        "input_file_id",
                    )
                batch = _batch_row(handle.id, body, info, plan.options, reader.errors)
                store.add_batch(conn, batch)
    except Exception:
        with contextlib.suppress(UnknownJob):
            client.job(job_id).delete()
        raise
    return batch, handle.replayed


def _batch_row(
    job_id: str | None,
    body: BatchCreate,
    info: store.FileInfo,
    options: dict[str, Any],
    errors: list[Any],
) -> store.BatchInfo:
    now = time.time()
    return store.BatchInfo(
        id=f"batch_{job_id or uuid.uuid4().hex}",
        job_id=job_id,
        input_file_id=info.id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        batch_metadata=body.metadata,
        options=options,
        errors=errors,
        created_at=now,
        expires_at=now + WINDOW_SECONDS[body.completion_window],
        expired_at=None,
    )


@router.get("/batches/{batch_id}", summary="A batch, as OpenAI's batch object")
def get_batch(batch_id: str, client: ClientDep) -> BatchOut:
    return batch_out(client, _batch(client, batch_id))


@router.get("/batches", summary="List batches, newest first")
def list_batches(
    client: ClientDep,
    after: Annotated[
        str | None, Query(max_length=64, description="The last id of the page before")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    with client.db.connect() as conn:
        found = store.list_batches(conn, after, limit + 1)
    data = []
    for batch in found[:limit]:
        with contextlib.suppress(UnknownJob):  # its job deleted meanwhile
            data.append(batch_out(client, batch))
    return BatchList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(found) > limit,
    )


@router.post("/batches/{batch_id}/cancel", summary="Cancel a batch: what is not run yet")
def cancel_batch(batch_id: str, client: ClientDep) -> BatchOut:
    """Lines not yet run are cancelled (the error file lists them as
    batch_cancelled); finished ones stay in the output file.  Cancelling a finished
    batch changes nothing."""
    batch = _batch(client, batch_id)
    if batch.job_id is None:  # failed: nothing to cancel
        return batch_out(client, batch)
    try:
        client.job(batch.job_id).cancel()
    except UnknownJob:
        raise ApiError(404, f"no batch {batch_id!r}", "batch_id") from None
    return batch_out(client, batch)


def _batch(client: Client, batch_id: str) -> store.BatchInfo:
    batch = None
    if len(batch_id) <= 64:
        with client.db.connect() as conn:
            batch = store.get_batch(conn, batch_id)
    if batch is None:
        raise ApiError(404, f"no batch {batch_id[:80]!r}", "batch_id")
    return batch
