"""An uploaded JSONL or CSV file, from the multipart form to the documents the
Client reads from it.

Starlette spools the file part to disk as it arrives (past 1 MiB); it is copied
once into a named file with its format's extension (digesting it on the way, for
the Idempotency-Key), and the Client reads that with the CLI's readers, one chunk
at a time: the file is never held in memory, and its bad lines become error rows
that name the line, as with ``docqueue enqueue``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from docqueue.api.errors import ApiError
from docqueue.api.schemas import UploadFields
from docqueue.formats.readers import InputError, read_documents
from docqueue.producer.documents import Record

#: What the readers read, by extension (.json is read as JSONL, as the CLI does).
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")
#: The extension for a file whose name has none of those, by its part's content type.
CONTENT_TYPES = {
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
    "application/jsonlines": ".jsonl",
    "text/csv": ".csv",
    "text/tab-separated-values": ".tsv",
}
#: The longest source name kept with the job.
MAX_SOURCE = 1024
#: Form limits: the file, and a few short fields (params may hold 256 labels).
MAX_FIELDS = 16
MAX_FIELD_BYTES = 1024 * 1024


def parse_form(form: FormData) -> tuple[UploadFields, UploadFile]:
    """The fields and the file of an upload; 422 naming what is wrong."""
    fields: dict[str, str] = {}
    upload: UploadFile | None = None
    for key, value in form.multi_items():
        if isinstance(value, str):
            if key in fields:
                raise ApiError(422, f"{key}: given twice", key)
            fields[key] = value
        elif key != "file":
            raise ApiError(422, f"{key}: unexpected file; send the documents as 'file'", key)
        else:
            upload = value
    if upload is None:
        raise ApiError(
            422,
            "file: no file; send the documents as multipart/form-data, e.g. "
            "curl -F file=@docs.jsonl -F task=classify -F model=NAME ...",
            "file",
        )
    try:
        return UploadFields.model_validate(fields), upload
    except ValidationError as exc:
        from fastapi.exceptions import RequestValidationError

        raise RequestValidationError(exc.errors()) from None


def source_name(upload: UploadFile) -> str:
    """The file's own name, without any directories the client sent with it."""
    raw = upload.filename or "upload"
    name = PureWindowsPath(PurePosixPath(raw).name).name.replace("\x00", "")
    return (name or "upload")[:MAX_SOURCE]


def suffix_of(upload: UploadFile, name: str) -> str:
    """The extension the readers go by: the file name's, else its content type's."""
    suffix = Path(name).suffix.lower()
    if suffix in SUFFIXES:
        return suffix
    content_type = (upload.content_type or "").split(";")[0].strip().lower()
    if content_type in CONTENT_TYPES:
        return CONTENT_TYPES[content_type]
    raise ApiError(
        422,
        f"file {name!r}: unknown format; upload a .jsonl or .csv file (or send the part "
        "with Content-Type application/x-ndjson or text/csv)",
        "file",
    )


def spool(source: IO[bytes], suffix: str, digest: Any) -> Path:
    """Copy the upload into a named file ending in ``suffix``, feeding ``digest`` on
    the way; the caller removes the file."""
    fd, name = tempfile.mkstemp(prefix="docqueue-upload-", suffix=suffix)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            source.seek(0)
            while block := source.read(1024 * 1024):
                digest.update(block)
                out.write(block)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def documents(path: Path, name: str, fields: UploadFields) -> Iterator[Record]:
    """The file's documents; a file that cannot give any (no such column, empty) is
    a 422 naming the upload, before anything is queued."""
    try:
        return read_documents(path, text_field=fields.text_field, id_field=fields.id_field)
    except InputError as exc:
        raise ApiError(422, str(exc).replace(str(path), name), "file") from None


def remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
