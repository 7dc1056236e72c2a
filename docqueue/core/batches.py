"""OpenAI-style batches: create one from an uploaded file, read it, list them,
cancel it, expire those past their completion window, and read its output and
error lines.  A batch is an ordinary docqueue job underneath (durable, resumable,
one result per line); the batch row adds what OpenAI's batch object says besides
the job's own state.

    batch = client.batches.create(input_file_id=info.id, endpoint="/v1/embeddings")
    client.batches.retrieve(batch.id).status          # in_progress, completed, ...
    for line in client.batches.output_lines(batch.id): ...

A batch's status, and when it is in each, is described in :mod:`.batch_object`.
:meth:`Batches.expire_due` expires those still running past their window: reading
or listing batches calls it, and so does the API server every
``api_batch_sweep_interval`` seconds, so a batch expires without anyone asking.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import itertools
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from docqueue.core import enqueue, fleet
from docqueue.core.batch_object import Batch
from docqueue.core.errors import BadBatch, InputFileDeleted, UnknownBatch, UnknownFile, UnknownJob
from docqueue.core.files import Files, Page
from docqueue.core.jobs import JobHandle
from docqueue.core.services import Services
from docqueue.db import files as store
from docqueue.db.files import BatchInfo, FileInfo
from docqueue.db.webhooks import record_batch_failed
from docqueue.formats.batch_lines import (
    Plan,
    Reader,
    endpoint_problem,
    first_plan,
    split_lines,
    task_of,
)
from docqueue.jobspec import JobSpec

#: The completion windows (OpenAI's only one too); a batch not finished by then expires.
WINDOW_SECONDS = {"24h": 24 * 3600.0}
#: Bytes of a file's first lines kept while its plan is found, so that reading the
#: file for its documents goes on from there: read once.  A file whose first line
#: that can run comes later than this is read again from the start.
KEEP_BYTES = 8 * 1024 * 1024


class Batches:
    """The batches of the ledger ``services`` works with (OpenAI's ``client.batches``)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.files = Files(services)

    def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        input_digest: str | None = None,
    ) -> Batch:
        """Every line of the file is in SQL and queued when this returns.  The lines
        must all name the same model and parameters; a line that cannot run gets a
        line in the error file that names it.  A file with no line that can run
        gives a batch that has failed (``errors`` saying why), as OpenAI's validation
        does.  A model no worker has served raises
        :class:`~docqueue.core.errors.UnknownModel`, nothing created.

        With an ``idempotency_key`` an earlier create used, that create's batch is
        returned (``replayed``) when ``input_digest`` (a digest of the request; by
        default of these arguments) is the same, else :class:`KeyReused`."""
        if problem := endpoint_problem(endpoint):
            raise BadBatch(problem, "endpoint")
        if completion_window not in WINDOW_SECONDS:
            raise BadBatch(
                f"completion_window {completion_window!r}: use {', '.join(WINDOW_SECONDS)}",
                "completion_window",
            )
        info = self._input_file(input_file_id)
        request = BatchRequest(endpoint, completion_window, metadata, info)
        lines = _Lines(self.services, info.id)
        plan = first_plan(lines.opening(), endpoint, self.services.settings.max_new_tokens_cap)
        if isinstance(plan, list):
            return self._view(self._failed(request, plan))
        fleet.known_model(self.services, plan.model, task_of(endpoint))
        if idempotency_key is not None and input_digest is None:
            input_digest = _digest(input_file_id, endpoint, completion_window, metadata)
        batch, replayed = self._create(request, plan, lines, idempotency_key, input_digest)
        return self._view(batch, replayed)

    def retrieve(self, batch_id: str) -> Batch:
        """The batch (expiring those due first); :class:`UnknownBatch`."""
        self.expire_due()
        return self._view(self._row(batch_id))

    def list(self, *, after: str | None = None, limit: int = 20) -> Page[Batch]:
        """Newest first, from the batch after ``after`` (a batch id) on."""
        self.expire_due()
        with self.services.db.connect() as conn:
            found = store.list_batches(conn, after, limit + 1)
        data = []
        for row in found[:limit]:
            with contextlib.suppress(UnknownJob):  # its job deleted meanwhile
                data.append(self._view(row))
        return Page(data, len(found) > limit)

    def cancel(self, batch_id: str) -> Batch:
        """Lines not yet run are cancelled (the error file lists them as
        batch_cancelled); finished ones stay in the output file.  Cancelling a
        finished batch changes nothing."""
        row = self._row(batch_id)
        if row.job_id is None:  # failed: nothing to cancel
            return self._view(row)
        try:
            JobHandle(self.services, row.job_id).cancel()
        except UnknownJob:
            raise UnknownBatch(batch_id) from None
        return self._view(row)

    def expire_due(self) -> builtins.list[str]:
        """Expire every batch still running past its ``expires_at``: its lines not
        yet run are cancelled.  Returns the ids of those expired."""
        with self.services.db.connect() as conn:
            due = store.due_batches(conn, time.time())
        expired = []
        for row in due:
            with self.services.db.begin() as conn:  # first: the cancel's webhook says expired
                store.mark_expired(conn, row.id, time.time())
            with contextlib.suppress(UnknownJob):  # deleted meanwhile
                JobHandle(self.services, row.job()).cancel()
                expired.append(row.id)
        return expired

    def output_lines(self, batch_id: str) -> Iterator[str]:
        """The lines of the batch's output file (JSON, one per request that
        succeeded, in input order); none for a failed batch."""
        return self._lines(batch_id, "output")

    def error_lines(self, batch_id: str) -> Iterator[str]:
        """The lines of the batch's error file: the requests refused, failed,
        cancelled or expired."""
        return self._lines(batch_id, "errors")

    # --- creating --------------------------------------------------------------------

    def _input_file(self, file_id: str) -> FileInfo:
        info = self.files.uploaded(file_id)
        if info is None:
            raise UnknownFile(file_id)
        if info.purpose != "batch":
            raise BadBatch(f"file {file_id} has purpose {info.purpose}, not batch", "input_file_id")
        return info

    def _failed(self, request: BatchRequest, errors: builtins.list[dict[str, Any]]) -> BatchInfo:
        """A batch that failed validation: kept, with why, and without a job."""
        batch = request.row(None, {}, errors)
        hook = self.services.settings.webhook_batch_url
        with self.services.db.begin() as conn:
            store.add_batch(conn, batch)
            if hook is not None:
                record_batch_failed(conn, batch.id, hook, batch.created_at)
        return batch

    def _create(
        self,
        request: BatchRequest,
        plan: Plan,
        lines: _Lines,
        key: str | None,
        digest: str | None,
    ) -> tuple[BatchInfo, bool]:
        """Queue the lines as a job, then add the batch row; a failure part way
        deletes the job (nothing half-created)."""
        job_id = uuid.uuid4().hex
        settings = self.services.settings
        endpoint, info = request.endpoint, request.file
        reader = Reader(endpoint, plan, settings.max_new_tokens_cap, settings.max_document_chars)
        try:
            spec = JobSpec(
                task_of(endpoint),
                plan.model,
                plan.params,
                name=f"batch_{job_id}",
                source=info.filename,
                idempotency_key=key,
                input_digest=digest,
                # its end is POSTed as OpenAI's batch event (docqueue.webhooks.wire_body)
                callback_url=settings.webhook_batch_url,
            )
            records = reader.records(lines.every())
            handle = enqueue.submit_many(self.services, records, spec, job_id=job_id)
            with self.services.db.begin() as conn:
                batch = store.batch_of_job(conn, handle.id)
                if batch is None:
                    if not store.hold_file(conn, info.id):
                        raise InputFileDeleted(info.id)
                    batch = request.row(handle.id, plan.options, reader.errors)
                    store.add_batch(conn, batch)
        except Exception:
            with contextlib.suppress(UnknownJob):
                JobHandle(self.services, job_id).delete()
            raise
        return batch, handle.replayed

    # --- reading ---------------------------------------------------------------------

    def _row(self, batch_id: str) -> BatchInfo:
        batch = None
        if len(batch_id) <= 64:
            with self.services.db.connect() as conn:
                batch = store.get_batch(conn, batch_id)
        if batch is None:
            raise UnknownBatch(batch_id)
        return batch

    def _view(self, batch: BatchInfo, replayed: bool = False) -> Batch:
        """The batch object: the row, and its job's state read now."""
        if batch.job_id is None:
            return Batch.failed(batch)
        return Batch.of(batch, JobHandle(self.services, batch.job_id).status(), replayed)

    def _lines(self, batch_id: str, kind: str) -> Iterator[str]:
        row = self._row(batch_id)
        if row.job_id is None:
            return iter(())
        job = JobHandle(self.services, row.job_id).info()
        return self.files.made_lines(row, kind, job.model, int(job.created_at))


@dataclass(frozen=True)
class BatchRequest:
    """What a create asked for, and the file it reads."""

    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    file: FileInfo

    def row(self, job_id: str | None, options: dict[str, Any], errors: list[Any]) -> BatchInfo:
        now = time.time()
        return BatchInfo(
            id=f"batch_{job_id or uuid.uuid4().hex}",
            job_id=job_id,
            input_file_id=self.file.id,
            endpoint=self.endpoint,
            completion_window=self.completion_window,
            batch_metadata=self.metadata,
            options=options,
            errors=errors,
            created_at=now,
            expires_at=now + WINDOW_SECONDS[self.completion_window],
            expired_at=None,
        )


class _Lines:
    """The lines of an uploaded file, read from SQL once: :meth:`opening` reads
    until the caller stops (at the first line that can run) and keeps what it read
    (up to :data:`KEEP_BYTES`); :meth:`every` gives those again, then the rest."""

    def __init__(self, services: Services, file_id: str) -> None:
        self.services, self.file_id = services, file_id
        self._source = self._read()
        self._kept: list[tuple[int, bytes]] | None = []
        self._size = 0

    def _read(self) -> Iterator[tuple[int, bytes]]:
        return split_lines(store.file_chunks(self.services.db.connect, self.file_id))

    def opening(self) -> Iterator[tuple[int, bytes]]:
        for number, line in self._source:
            if self._kept is not None:
                self._size += len(line)
                if self._size <= KEEP_BYTES:
                    self._kept.append((number, line))
                else:
                    self._kept = None
            yield number, line

    def every(self) -> Iterable[tuple[int, bytes]]:
        if self._kept is None:  # too much to keep: from the start again
            return self._read()
        return itertools.chain(self._kept, self._source)


def _digest(input_file_id: str, endpoint: str, window: str, metadata: dict[str, str] | None) -> str:
    """A digest of a create's arguments, to tell a retry from another create that
    reuses its idempotency key."""
    body = {
        "input_file_id": input_file_id,
        "endpoint": endpoint,
        "completion_window": window,
        "metadata": metadata,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"batch\n{canonical}\n".encode()).hexdigest()
