"""Jobs: create one from a JSON list or an uploaded file, list them, read one's
status and results (pages with a cursor, or a JSONL/CSV/Parquet download), cancel,
delete."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from docqueue.api import uploads
from docqueue.api.deps import (
    ClientDep,
    IdempotencyKey,
    JobDep,
    digester,
    request_digest,
)
from docqueue.api.errors import ApiError, ErrorOut
from docqueue.api.models import known_model
from docqueue.api.schemas import (
    Cancelled,
    Deleted,
    DocumentStatus,
    JobBrief,
    JobCreate,
    JobList,
    JobOut,
    ResultsPage,
    State,
    UploadFields,
)
from docqueue.core.errors import AllRefused
from docqueue.formats.batch_output import CHUNK, in_chunks
from docqueue.formats.extras import MissingExtra
from docqueue.formats.results import csv_columns, csv_records
from docqueue.jobspec import JobSpec
from docqueue.params import validate_params
from docqueue.producer.client import Client, JobHandle
from docqueue.webhooks import check_callback_url

router = APIRouter(prefix="/api", tags=["jobs"])

#: Rows read from SQL at a time for a download.
DOWNLOAD_ROWS = 1000
REPLAYED = "Idempotent-Replayed"
#: The largest sequence number a document can have (a 32-bit column).
MAX_SEQ = 2**31 - 1
#: Parquet's media type (registered with IANA in 2024).
PARQUET = "application/vnd.apache.parquet"


@router.post(
    "/jobs",
    status_code=201,
    summary="Create a job from a list of documents",
    responses={200: {"model": JobOut, "description": "The job an earlier request created"}},
)
def create_job(
    body: JobCreate, response: Response, client: ClientDep, key: IdempotencyKey = None
) -> JobOut:
    """Documents are strings or objects with `text` (a string, chat messages for
    generate, or fields for rerank: `{"query": ..., "passage": ...}`) and your
    `id`.  A document that cannot run gets an error row naming the problem; a list
    none of which can run is refused."""
    known_model(client, body.model, body.task)
    digest = request_digest("jobs", body.model_dump(mode="json")) if key else None
    spec = JobSpec(
        body.task,
        body.model,
        body.params or {},
        name=body.name,
        reuse=body.reuse,
        idempotency_key=key,
        input_digest=digest,
        callback_url=body.callback_url,
    )
    handle = _submit(client, body.documents_for_client(), spec, param="documents")
    return _created(handle, response)


UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                **UploadFields.model_json_schema(),
                "title": "Upload",
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "JSONL (one object a line) or CSV with a header",
                    },
                    **UploadFields.model_json_schema()["properties"],
                },
                "required": ["file", *UploadFields.model_json_schema()["required"]],
            }
        }
    },
}


@router.post(
    "/jobs/upload",
    status_code=201,
    summary="Create a job from an uploaded JSONL or CSV file",
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses={
        200: {"model": JobOut, "description": "The job an earlier request created"},
        413: {"model": ErrorOut, "description": "The upload is over DOCQUEUE_API_MAX_UPLOAD_BYTES"},
    },
)
async def upload_job(
    request: Request, response: Response, client: ClientDep, key: IdempotencyKey = None
) -> JobOut:
    """Send the file as multipart/form-data with the fields `task`, `model`, and
    optionally `params` (a JSON object), `name`, `text_field` and `id_field`.  The
    file is read a chunk at a time; a line that cannot be read gets an error row
    naming it ("line 4: malformed JSON ...")."""
    path = None
    try:
        async with request.form(
            max_files=1, max_fields=uploads.MAX_FIELDS, max_part_size=uploads.MAX_FIELD_BYTES
        ) as form:
            fields, upload = uploads.parse_form(form)
            name = uploads.source_name(upload)
            suffix = uploads.suffix_of(upload, name)
            await run_in_threadpool(_check_fields, client, fields)
            digest = digester("upload", {**fields.model_dump(mode="json"), "format": suffix})
            path = await run_in_threadpool(uploads.spool, upload.file, suffix, digest)
        handle = await run_in_threadpool(
            lambda: _submit(
                client,
                uploads.documents(path, name, fields),
                JobSpec(
                    fields.task,
                    fields.model,
                    fields.params or {},
                    name=fields.name,
                    reuse=fields.reuse,
                    source=name,
                    idempotency_key=key,
                    input_digest=digest.hexdigest() if key else None,
                    callback_url=fields.callback_url,
                ),
                param="file",
            )
        )
        return await run_in_threadpool(_created, handle, response)
    finally:
        uploads.remove(path)


def _check_fields(client: Client, fields: UploadFields) -> None:
    """What can be refused before the file is read: the model and the parameters."""
    known_model(client, fields.model, fields.task)
    if fields.callback_url is not None:
        check_callback_url(fields.callback_url, client.settings)
    validate_params(
        fields.task, fields.params, max_new_tokens_cap=client.settings.max_new_tokens_cap
    )


def _submit(client: Client, documents: Iterable[Any], spec: JobSpec, *, param: str) -> JobHandle:
    """Queue the documents as the job ``spec`` describes, all or nothing
    (:meth:`Client.enqueue` with ``whole``); ``param`` names the request's field
    that held them, for a refusal of every one."""
    try:
        return client.enqueue(spec, documents, whole=True)
    except AllRefused as exc:
        exc.param = param
        raise


def _created(handle: JobHandle, response: Response) -> JobOut:
    if handle.replayed:
        response.status_code = 200
        response.headers[REPLAYED] = "true"
    return JobOut.of_status(handle.status())


@router.get("/jobs", summary="List jobs, newest first")
def list_jobs(
    client: ClientDep,
    state: State | None = None,
    model: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = None,
    name: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    interactive: Annotated[
        bool, Query(description="Also the one-document jobs of POST /api/documents")
    ] = False,
) -> JobList:
    found = client.jobs(state=state, model=model, name=name, limit=limit, interactive=interactive)
    return JobList(data=[JobBrief.of(summary) for summary in found])


@router.get("/jobs/{job_id}", summary="A job's status: progress, pace, ETA and errors")
def job_status(job: JobDep) -> JobOut:
    return JobOut.of_status(job.status())


@router.get("/jobs/{job_id}/results", summary="A page of a job's results, in input order")
def job_results(
    job: JobDep,
    cursor: Annotated[
        str | None, Query(max_length=20, description="next_cursor of the page before")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Annotated[
        DocumentStatus | None,
        Query(description="Only the documents in this state (failed: a sample of errors)"),
    ] = None,
) -> ResultsPage:
    """Every document of the job has one row: pending ones say so.  Wait for the job
    to finish to read every result."""
    after = _after(cursor)
    rows = job.results_page(after, limit + 1, status)
    more = len(rows) > limit
    rows = rows[:limit]
    return ResultsPage(data=rows, next_cursor=str(rows[-1]["seq"]) if more else None)


@router.get("/jobs/{job_id}/recent", summary="The documents workers computed last, newest first")
def recent_results(job: JobDep, limit: Annotated[int, Query(ge=1, le=100)] = 10) -> ResultsPage:
    """Rows as the results pages give them; next_cursor is always None."""
    return ResultsPage(data=job.recent(limit), next_cursor=None)


def _after(cursor: str | None) -> int:
    if cursor is None:
        return -1
    if not (cursor.isascii() and cursor.isdigit()):
        raise ApiError(422, f"cursor {cursor!r}: pass the next_cursor of a results page", "cursor")
    return min(int(cursor), MAX_SEQ)  # past every document: an empty page


@router.get(
    "/jobs/{job_id}/results.jsonl",
    summary="Download a job's results as JSONL",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def download_jsonl(job: JobDep) -> StreamingResponse:
    lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in job.paged_results(DOWNLOAD_ROWS))
    return _download(lines, job, "jsonl", "application/x-ndjson")


@router.get(
    "/jobs/{job_id}/results.csv",
    summary="Download a job's results as CSV (the columns of its task)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
def download_csv(job: JobDep) -> StreamingResponse:
    info = job.info()
    records = csv_records(job.paged_results(DOWNLOAD_ROWS), csv_columns(info.task, info.params))
    return _download(records, job, "csv", "text/csv; charset=utf-8")


@router.get(
    "/jobs/{job_id}/results.parquet",
    summary="Download a job's results as Parquet (typed columns)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {PARQUET: {}}},
        501: {"model": ErrorOut, "description": "pyarrow is not installed on the server"},
    },
)
def download_parquet(job: JobDep) -> StreamingResponse:
    """Columns as ``docqueue export --out x.parquet`` writes them (embeddings as
    fixed-size float32 lists, label scores as a struct).  A Parquet file is only
    complete at its footer, so it is written to a temporary file on the server
    first, then sent a chunk at a time; the file goes when the response ends."""
    from docqueue.formats.writers import WriteError, write_parquet

    task = job.info().task
    with contextlib.ExitStack() as closing:
        spool = closing.enter_context(tempfile.TemporaryFile())
        try:
            write_parquet(job.paged_results(DOWNLOAD_ROWS), spool, task)
        except MissingExtra as exc:
            raise ApiError(501, str(exc)) from None
        except WriteError as exc:
            raise ApiError(409, f"job {job.id}: {exc}") from None
        spool.seek(0)
        closing.pop_all()  # the response closes it, once sent
    disposition = f'attachment; filename="{job.id}.parquet"'
    return StreamingResponse(
        _file_chunks(spool), media_type=PARQUET, headers={"Content-Disposition": disposition}
    )


def _file_chunks(spool: IO[bytes]) -> Iterator[bytes]:
    with spool:
        while block := spool.read(CHUNK):
            yield block


def _download(texts: Iterable[str], job: JobHandle, ext: str, media: str) -> StreamingResponse:
    disposition = f'attachment; filename="{job.id}.{ext}"'
    return StreamingResponse(
        in_chunks(texts), media_type=media, headers={"Content-Disposition": disposition}
    )


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job: what is not computed yet")
def cancel_job(job: JobDep) -> Cancelled:
    """Documents not yet computed become cancelled; finished ones stay.  Cancelling a
    finished job changes nothing."""
    cancelled = job.cancel()
    return Cancelled(id=job.id, cancelled=cancelled, state=job.progress().state)


@router.delete("/jobs/{job_id}", summary="Delete a job, its documents and results")
def delete_job(job: JobDep) -> Deleted:
    return Deleted(id=job.id, documents=job.delete())
