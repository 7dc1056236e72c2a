"""OpenAI-style files: the batch input files callers upload, and the output and
error files of a batch, made from its job's results when they are read.

Uploaded files live in the ledger, a chunk at a time, so every process sees them.
A batch's lines are all in the ledger once it is created, so no batch needs its
input file afterwards: deleting it is allowed at any time, as on OpenAI (the batch
keeps its ``input_file_id``; that file's content is then gone).  A delete that
races a batch being created from the file makes that creation fail with nothing
created (see :func:`docqueue.db.files.hold_file`).

    files = client.files                       # Files(client.services)
    info = files.create(("requests.jsonl", data), purpose="batch")
    b"".join(files.content(info.id))
"""

from __future__ import annotations

import hashlib
import io
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import IO, Any, Generic, Protocol, TypeVar

from docqueue.core.errors import KeyReused, MadeFile, UnknownFile, UnknownJob, WrongPurpose
from docqueue.core.jobs import JobHandle
from docqueue.core.services import Services
from docqueue.db import IntegrityError
from docqueue.db import files as store
from docqueue.db.files import BatchInfo as BatchInfo
from docqueue.db.files import FileInfo as FileInfo
from docqueue.db.files import TooLarge as TooLarge
from docqueue.formats.batch_output import error_lines, in_chunks, output_lines

#: A batch's output and error files: ``file-<job id>-output`` and ``-errors``.
MADE = re.compile(r"^file-([0-9a-f]{32})-(output|errors)$")
UPLOADED = re.compile(r"^file-[0-9a-f]{32}$")
#: Result rows read at a time when a batch's file is made.
PAGE_ROWS = 1000


class _Named(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=_Named)

#: What :meth:`Files.create` takes: the bytes, a binary stream, or (filename, either)
#: as OpenAI's SDK does.
FileSource = bytes | IO[bytes] | tuple[str, bytes | IO[bytes]]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, as OpenAI's cursor pages: ``after=last_id`` gives the next."""

    data: list[T]
    has_more: bool

    @property
    def first_id(self) -> str | None:
        return self.data[0].id if self.data else None

    @property
    def last_id(self) -> str | None:
        return self.data[-1].id if self.data else None


def purpose_problem(purpose: str | None) -> str | None:
    if purpose == "batch":
        return None
    return f"purpose {purpose!r}: docqueue keeps files for the Batch API only; use 'batch'"


class Files:
    """The files of the ledger ``services`` works with (OpenAI's ``client.files``)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def create(
        self,
        file: FileSource,
        *,
        purpose: str = "batch",
        filename: str | None = None,
        idempotency_key: str | None = None,
    ) -> FileInfo:
        """Upload a batch input file (JSONL); see :meth:`upload`."""
        name, source = _opened(file, filename)
        return self.upload(source, name, purpose, idempotency_key)[0]

    def upload(
        self, source: IO[bytes], filename: str, purpose: str, key: str | None = None
    ) -> tuple[FileInfo, bool]:
        """Copy ``source`` (seekable) into the ledger in one transaction: a failure
        (:class:`TooLarge`, past ``api_max_upload_bytes``) leaves nothing.  Returns the
        file and whether it was there already: a retry with the same idempotency
        ``key`` returns the file the first upload created (:class:`KeyReused` when
        its content or name differ)."""
        if problem := purpose_problem(purpose):
            raise WrongPurpose(problem)
        db = self.services.db
        if key is not None:
            with db.connect() as conn:
                earlier = store.file_with_key(conn, key)
            if earlier is not None:
                return _replay(earlier, source, purpose, filename, key), True
        info = FileInfo(
            id=f"file-{uuid.uuid4().hex}",
            purpose=purpose,
            filename=filename,
            bytes=0,
            created_at=time.time(),
            idempotency_key=key,
        )
        source.seek(0)
        limit = self.services.settings.api_max_upload_bytes
        try:
            with db.begin() as conn:
                size = store.store_file(conn, info, source, _digest(purpose, filename), limit)
        except IntegrityError:  # a concurrent upload with the same key won
            if key is None:
                raise
            with db.connect() as conn:
                earlier = store.file_with_key(conn, key)
            if earlier is None:
                raise
            return _replay(earlier, source, purpose, filename, key), True
        return FileInfo(**{**info.__dict__, "bytes": size}), False

    def uploaded(self, file_id: str) -> FileInfo | None:
        """The uploaded file ``file_id`` names, or None (also for an id of another shape)."""
        if not UPLOADED.match(file_id):
            return None
        with self.services.db.connect() as conn:
            return store.get_file(conn, file_id)

    def retrieve(self, file_id: str) -> FileInfo:
        """An uploaded file, or a batch's output or error file (purpose
        ``batch_output``, its size counted by making it); :class:`UnknownFile`."""
        made = MADE.match(file_id)
        if made is None:
            info = self.uploaded(file_id)
            if info is None:
                raise UnknownFile(file_id)
            return info
        batch, model, created = self._made_of(made.group(1), file_id)
        lines = self.made_lines(batch, made.group(2), model, created)
        size = sum(len(chunk) for chunk in in_chunks(lines))
        return FileInfo(
            id=file_id,
            purpose="batch_output",
            filename=f"{batch.id}_{made.group(2)}.jsonl",
            bytes=size,
            created_at=created,
        )

    def list(
        self,
        *,
        purpose: str | None = None,
        limit: int = 10_000,
        order: str = "desc",
        after: str | None = None,
    ) -> Page[FileInfo]:
        """The uploaded files by ``created_at``, ``desc`` (newest first) or ``asc``.
        A batch's output and error files are not listed: they are named by the
        batch's ``output_file_id`` and ``error_file_id``."""
        with self.services.db.connect() as conn:
            found = store.list_files(conn, purpose, after, limit + 1, order)
        return Page(found[:limit], len(found) > limit)

    def delete(self, file_id: str) -> None:
        """Delete an uploaded file; batches created from it are not affected (their
        lines were read when they were created).  :class:`MadeFile` for a batch's
        output or error file, :class:`UnknownFile` when there is no such file."""
        if MADE.match(file_id):
            raise MadeFile(file_id)
        deleted = False
        if UPLOADED.match(file_id):
            with self.services.db.begin() as conn:
                deleted = store.delete_file(conn, file_id)
        if not deleted:
            raise UnknownFile(file_id)

    def content(self, file_id: str) -> Iterator[bytes]:
        """The file's bytes in chunks, each read in a short transaction (an upload),
        or made from its batch's results a page of rows at a time."""
        made = MADE.match(file_id)
        if made is None:
            info = self.uploaded(file_id)
            if info is None:
                raise UnknownFile(file_id)
            return store.file_chunks(self.services.db.connect, info.id)
        batch, model, created = self._made_of(made.group(1), file_id)
        return in_chunks(self.made_lines(batch, made.group(2), model, created))

    def made_lines(self, batch: BatchInfo, kind: str, model: str, created: int) -> Iterator[str]:
        """The lines of a batch's ``output`` or ``errors`` file (its job's ``model``,
        and ``created``: when the file is said to be made)."""
        rows = JobHandle(self.services, batch.job()).paged_results(PAGE_ROWS)
        if kind == "output":
            return output_lines(rows, batch, model, created)
        return error_lines(rows, batch)

    def _made_of(self, job_id: str, file_id: str) -> tuple[BatchInfo, str, int]:
        """The batch whose output ``file_id`` is, its model and when its file was made."""
        with self.services.db.connect() as conn:
            batch = store.batch_of_job(conn, job_id)
        try:
            if batch is None:
                raise UnknownJob(job_id)
            job = JobHandle(self.services, job_id).info()
        except UnknownJob:
            raise UnknownFile(file_id, made=True) from None
        return batch, job.model, int(job.created_at)


def _opened(file: FileSource, filename: str | None) -> tuple[str, IO[bytes]]:
    """The name and a seekable stream of what :meth:`Files.create` was given."""
    if isinstance(file, tuple):
        filename, file = filename or file[0], file[1]
    source = io.BytesIO(file) if isinstance(file, bytes) else file
    name = filename or getattr(source, "name", None)
    return (PurePath(name).name if isinstance(name, str) else "") or "upload", source


def _digest(purpose: str, filename: str) -> Any:
    """A sha256 fed with what names an upload; its content is fed after."""
    return hashlib.sha256(f"file\n{purpose}\n{filename}\n".encode())


def _replay(
    earlier: FileInfo, source: IO[bytes], purpose: str, filename: str, key: str
) -> FileInfo:
    """The earlier upload with ``key``, when this one is the same file again."""
    digest = _digest(purpose, filename)
    source.seek(0)
    while block := source.read(store.CHUNK_BYTES):
        digest.update(block)
    if digest.hexdigest() != earlier.digest:
        raise KeyReused(key, earlier.id)
    return earlier
