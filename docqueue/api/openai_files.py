"""OpenAI-compatible files: ``POST /v1/files`` (purpose ``batch``), the list of
uploaded files, a file's object, its content, and deleting one.  Uploaded files
live in the database, so every API process sees them; a batch's output and error
files are made from its job's results when they are read (see
:mod:`docqueue.api.batch_output`).

A batch's lines are all in the ledger when ``POST /v1/batches`` returns, so no
batch needs its input file afterwards: deleting it is allowed at any time, as on
OpenAI (the batch keeps its ``input_file_id``; that file's content is then 404).
A delete that races a batch being created from the file makes that creation fail
with nothing created (see :func:`docqueue.db.files.hold_file`)."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from docqueue.api import uploads
from docqueue.api.batch_output import error_lines, output_lines
from docqueue.api.deps import ClientDep, IdempotencyKey
from docqueue.api.errors import ApiError, ErrorOut
from docqueue.api.jobs import REPLAYED, every_row, in_chunks
from docqueue.api.limits import too_large
from docqueue.api.schemas import _Out
from docqueue.db import files as store
from docqueue.producer.client import Client, KeyReused, UnknownJob

router = APIRouter(prefix="/v1", tags=["openai-batch"])

#: A batch's output and error files: ``file-<job id>-output`` and ``-errors``.
MADE = re.compile(r"^file-([0-9a-f]{32})-(output|errors)$")
UPLOADED = re.compile(r"^file-[0-9a-f]{32}$")
#: Form fields the OpenAI SDKs may send that change nothing here.
IGNORED_FIELDS = ("expires_after[anchor]", "expires_after[seconds]")


class FileOut(_Out):
    """OpenAI's file object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    @classmethod
    def of(cls, info: store.FileInfo) -> FileOut:
        return cls(
            id=info.id,
            bytes=info.bytes,
            created_at=int(info.created_at),
            filename=info.filename,
            purpose=info.purpose,
        )


class FileList(_Out):
    """OpenAI's list of files (a cursor page)."""

    object: Literal["list"] = "list"
    data: list[FileOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(_Out):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


@router.get("/files", summary="List uploaded files, as OpenAI's GET /v1/files")
def list_files(
    client: ClientDep,
    purpose: Annotated[
        str | None, Query(max_length=64, description="Only files with this purpose")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[
        Literal["asc", "desc"], Query(description="By created_at: oldest or newest first")
    ] = "desc",
    after: Annotated[
        str | None, Query(max_length=64, description="The last id of the page before")
    ] = None,
) -> FileList:
    """The uploaded files (purpose batch).  A batch's output and error files are
    not listed: they are made from its job when read, and named by the batch's
    output_file_id and error_file_id."""
    with client.db.connect() as conn:
        found = store.list_files(conn, purpose, after, limit + 1, order)
    data = [FileOut.of(info) for info in found[:limit]]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(found) > limit,
    )


@router.delete("/files/{file_id}", summary="Delete an uploaded file, as OpenAI's")
def delete_file(file_id: str, client: ClientDep) -> FileDeleted:
    """Batches created from the file are not affected: their lines were read when
    they were created.  A batch's output and error files cannot be deleted on their
    own (409): they are its job's results, deleted with the job."""
    if MADE.match(file_id):
        raise ApiError(
            409,
            f"{file_id} is made from its batch's results: delete the job "
            "(DELETE /api/jobs/{job_id}) to delete them",
            "file_id",
        )
    deleted = False
    if UPLOADED.match(file_id):
        with client.db.begin() as conn:
            deleted = store.delete_file(conn, file_id)
    if not deleted:
        raise ApiError(404, f"no file {file_id[:80]!r}", "file_id")
    return FileDeleted(id=file_id, deleted=True)


@router.post(
    "/files",
    summary="Upload a batch input file (JSONL), as OpenAI's POST /v1/files",
    responses={
        200: {"model": FileOut},
        413: {"model": ErrorOut, "description": "Over DOCQUEUE_API_MAX_UPLOAD_BYTES"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "title": "FileUpload",
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "purpose": {"type": "string", "enum": ["batch"]},
                        },
                        "required": ["file", "purpose"],
                    }
                }
            },
        }
    },
)
async def upload_file(
    request: Request, response: Response, client: ClientDep, key: IdempotencyKey = None
) -> FileOut:
    """The file is kept in the database a chunk at a time; a retried upload with the
    same Idempotency-Key returns the file the first one created."""
    async with request.form(
        max_files=1, max_fields=uploads.MAX_FIELDS, max_part_size=uploads.MAX_FIELD_BYTES
    ) as form:
        purpose, upload = _parse_form(form)
        name = uploads.source_name(upload)
        info, replayed = await run_in_threadpool(_store, client, upload, name, purpose, key)
    if replayed:
        response.headers[REPLAYED] = "true"
    return FileOut.of(info)


def _parse_form(form: Any) -> tuple[str, UploadFile]:
    fields: dict[str, str] = {}
    upload: UploadFile | None = None
    for name, value in form.multi_items():
        if isinstance(value, str):
            if name not in IGNORED_FIELDS:
                fields[name] = value
        elif name == "file" and upload is None:
            upload = value
        else:
            raise ApiError(422, f"{name}: unexpected file; send the file as 'file'", name)
    if upload is None:
        raise ApiError(422, "file: no file; send the JSONL file as 'file'", "file")
    purpose = fields.pop("purpose", None)
    if purpose != "batch":
        raise ApiError(
            422,
            f"purpose {purpose!r}: docqueue keeps files for the Batch API only; use 'batch'",
            "purpose",
        )
    if fields:
        extra = sorted(fields)[0]
        raise ApiError(422, f"{extra}: not a field of a file upload", extra)
    return purpose, upload


def _store(
    client: Client, upload: UploadFile, name: str, purpose: str, key: str | None
) -> tuple[store.FileInfo, bool]:
    """Copy the upload into the database in one transaction: a failure (a file over
    the limit) leaves nothing."""
    limit = client.settings.api_max_upload_bytes
    digest = hashlib.sha256(f"file\n{purpose}\n{name}\n".encode())
    if key is not None:
        with client.db.connect() as conn:
            earlier = store.file_with_key(conn, key)
        if earlier is not None:
            return _replay(earlier, upload, digest, key), True
    info = store.FileInfo(
        id=f"file-{uuid.uuid4().hex}",
        purpose=purpose,
        filename=name,
        bytes=0,
        created_at=time.time(),
        idempotency_key=key,
    )
    upload.file.seek(0)
    try:
        with client.db.begin() as conn:
            size = store.store_file(conn, info, upload.file, digest, limit)
    except store.TooLarge:
        raise ApiError(413, too_large(limit, upload=True), "file") from None
    except IntegrityError:  # a concurrent upload with the same key won
        if key is None:
            raise
        with client.db.connect() as conn:
            earlier = store.file_with_key(conn, key)
        if earlier is None:
            raise
        return _replay(
            earlier, upload, hashlib.sha256(f"file\n{purpose}\n{name}\n".encode()), key
        ), True
    return store.FileInfo(**{**info.__dict__, "bytes": size}), False


def _replay(earlier: store.FileInfo, upload: UploadFile, digest: Any, key: str) -> store.FileInfo:
    upload.file.seek(0)
    while block := upload.file.read(store.CHUNK_BYTES):
        digest.update(block)
    if digest.hexdigest() != earlier.digest:
        raise KeyReused(key, earlier.id)
    return earlier


@router.get("/files/{file_id}", summary="A file's object: an upload, or a batch's output")
def get_file(file_id: str, client: ClientDep) -> FileOut:
    made = MADE.match(file_id)
    if made:
        batch, job_model, created = _batch_of(client, made.group(1), file_id)
        size = sum(len(c) for c in _made_chunks(client, batch, made.group(2), job_model, created))
        return FileOut(
            id=file_id,
            bytes=size,
            created_at=created,
            filename=f"{batch.id}_{made.group(2)}.jsonl",
            purpose="batch_output",
        )
    return FileOut.of(_uploaded(client, file_id))


@router.get(
    "/files/{file_id}/content",
    summary="A file's content: an uploaded file, or a batch's output or error file",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/jsonl": {}}}},
)
def file_content(file_id: str, client: ClientDep) -> StreamingResponse:
    made = MADE.match(file_id)
    if made:
        batch, model, created = _batch_of(client, made.group(1), file_id)
        chunks = _made_chunks(client, batch, made.group(2), model, created)
    else:
        info = _uploaded(client, file_id)
        chunks = store.file_chunks(client.db.connect, info.id)
    return StreamingResponse(chunks, media_type="application/jsonl")


def uploaded_file(client: Client, file_id: str) -> store.FileInfo | None:
    """The uploaded file ``file_id`` names, or None (also for an id of another shape)."""
    if not UPLOADED.match(file_id):
        return None
    with client.db.connect() as conn:
        return store.get_file(conn, file_id)


def _uploaded(client: Client, file_id: str) -> store.FileInfo:
    info = uploaded_file(client, file_id)
    if info is None:
        raise ApiError(404, f"no file {file_id[:80]!r}", "file_id")
    return info


def _batch_of(client: Client, job_id: str, file_id: str) -> tuple[store.BatchInfo, str, int]:
    """The batch whose output ``file_id`` is, its model and when its file was made."""
    with client.db.connect() as conn:
        batch = store.batch_of_job(conn, job_id)
    try:
        if batch is None:
            raise UnknownJob(job_id)
        job = client.job(job_id).info()
    except UnknownJob:
        raise ApiError(404, f"no file {file_id!r} (no such batch)", "file_id") from None
    return batch, job.model, int(job.created_at)


def _made_chunks(
    client: Client, batch: store.BatchInfo, kind: str, model: str, created: int
) -> Iterator[bytes]:
    rows = every_row(client.job(batch.job()))
    lines = (
        output_lines(rows, batch, model, created) if kind == "output" else error_lines(rows, batch)
    )
    return in_chunks(lines)
