"""OpenAI-compatible files: ``POST /v1/files`` (purpose ``batch``), the list of
uploaded files, a file's object, its content, and deleting one, over
:mod:`docqueue.core.files` (which keeps them in the ledger, and makes a batch's
output and error files from its job's results when they are read)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from docqueue.api import uploads
from docqueue.api.deps import ClientDep, IdempotencyKey
from docqueue.api.errors import ApiError, ErrorOut
from docqueue.api.jobs import REPLAYED
from docqueue.api.limits import too_large
from docqueue.api.openai.schemas import FileDeleted, FileList, FileOut
from docqueue.core.files import FileInfo, TooLarge, purpose_problem
from docqueue.producer.client import Client

router = APIRouter(prefix="/v1", tags=["openai-batch"])

#: Form fields the OpenAI SDKs may send that change nothing here.
IGNORED_FIELDS = ("expires_after[anchor]", "expires_after[seconds]")


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
    page = client.files.list(purpose=purpose, limit=limit, order=order, after=after)
    return FileList(
        data=[FileOut.of(info) for info in page.data],
        first_id=page.first_id,
        last_id=page.last_id,
        has_more=page.has_more,
    )


@router.delete("/files/{file_id}", summary="Delete an uploaded file, as OpenAI's")
def delete_file(file_id: str, client: ClientDep) -> FileDeleted:
    """Batches created from the file are not affected: their lines were read when
    they were created.  A batch's output and error files cannot be deleted on their
    own (409): they are its job's results, deleted with the job."""
    client.files.delete(file_id)
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
    if problem := purpose_problem(purpose):
        raise ApiError(422, problem, "purpose")
    if fields:
        extra = sorted(fields)[0]
        raise ApiError(422, f"{extra}: not a field of a file upload", extra)
    return "batch", upload  # the only purpose purpose_problem lets through


def _store(
    client: Client, upload: UploadFile, name: str, purpose: str, key: str | None
) -> tuple[FileInfo, bool]:
    try:
        return client.files.upload(upload.file, name, purpose, key)
    except TooLarge as exc:
        raise ApiError(413, too_large(exc.limit, upload=True), "file") from None


@router.get("/files/{file_id}", summary="A file's object: an upload, or a batch's output")
def get_file(file_id: str, client: ClientDep) -> FileOut:
    return FileOut.of(client.files.retrieve(file_id))


@router.get(
    "/files/{file_id}/content",
    summary="A file's content: an uploaded file, or a batch's output or error file",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/jsonl": {}}}},
)
def file_content(file_id: str, client: ClientDep) -> StreamingResponse:
    return StreamingResponse(client.files.content(file_id), media_type="application/jsonl")
