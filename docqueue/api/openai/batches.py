"""OpenAI-compatible batches: create one from an uploaded file, read it, list them,
cancel it, over :mod:`docqueue.core.batches` (a batch is an ordinary docqueue job
underneath; the core also expires those past their window and makes their files)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from docqueue.api.deps import ClientDep, IdempotencyKey, request_digest
from docqueue.api.errors import ApiError
from docqueue.api.jobs import REPLAYED
from docqueue.api.openai.schemas import BatchCreate, BatchList, BatchOut
from docqueue.core.errors import UnknownFile, UnknownModel
from docqueue.formats.batch_lines import endpoint_problem

router = APIRouter(prefix="/v1", tags=["openai-batch"])


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
    digest = request_digest("batch", body.model_dump(mode="json")) if key else None
    try:
        batch = client.batches.create(
            input_file_id=body.input_file_id,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            metadata=body.metadata,
            idempotency_key=key,
            input_digest=digest,
        )
    except UnknownFile:
        raise ApiError(
            404, f"input_file_id: no file {body.input_file_id!r}", "input_file_id"
        ) from None
    except UnknownModel as exc:
        raise ApiError(422, str(exc), "model") from None
    if batch.replayed:
        response.headers[REPLAYED] = "true"
    return BatchOut.of(batch)


@router.get("/batches/{batch_id}", summary="A batch, as OpenAI's batch object")
def get_batch(batch_id: str, client: ClientDep) -> BatchOut:
    return BatchOut.of(client.batches.retrieve(batch_id))


@router.get("/batches", summary="List batches, newest first")
def list_batches(
    client: ClientDep,
    after: Annotated[
        str | None, Query(max_length=64, description="The last id of the page before")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    page = client.batches.list(after=after, limit=limit)
    return BatchList(
        data=[BatchOut.of(batch) for batch in page.data],
        first_id=page.first_id,
        last_id=page.last_id,
        has_more=page.has_more,
    )


@router.post("/batches/{batch_id}/cancel", summary="Cancel a batch: what is not run yet")
def cancel_batch(batch_id: str, client: ClientDep) -> BatchOut:
    """Lines not yet run are cancelled (the error file lists them as
    batch_cancelled); finished ones stay in the output file.  Cancelling a finished
    batch changes nothing."""
    return BatchOut.of(client.batches.cancel(batch_id))
