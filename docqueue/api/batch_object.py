"""OpenAI's batch object, from a batch row and its job's state.

The states, and when docqueue's batch is in each:

- ``validating``: never seen; ``POST /v1/batches`` reads and queues every line
  before it answers.
- ``failed`` (``failed_at``, ``errors``): no line of the input file could run, or
  the lines name a model no worker has served.  Such a batch has no job.
- ``in_progress`` (``in_progress_at``: when it was created): its job is running.
- ``finalizing`` (``finalizing_at``): never seen for long; the output and error
  files are made from the job's results when they are read, so finalizing takes
  no time and ``finalizing_at`` equals ``completed_at``.
- ``completed`` (``completed_at``): every line has a result or an error.
- ``cancelling``, ``cancelled`` (``cancelling_at``, ``cancelled_at``): cancelling
  stops every line not yet run at once, so both times are the moment of the
  cancel and the batch is ``cancelled`` when the call returns.
- ``expired`` (``expired_at``): still running at ``expires_at`` (the 24h
  completion window); its lines not yet run are cancelled, and the error file lists
  them as ``batch_expired``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from docqueue.api.schemas import _Out
from docqueue.db import files as store
from docqueue.producer.client import Client, JobHandle

Status = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]


class RequestCounts(_Out):
    total: int
    completed: int
    """Requests that succeeded (lines of the output file)."""
    failed: int
    """Requests that failed, were refused or were cancelled (lines of the error file)."""


class BatchErrorOut(_Out):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(_Out):
    object: Literal["list"] = "list"
    data: list[BatchErrorOut]


class BatchOut(_Out):
    """OpenAI's batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    """The docqueue model that runs the lines (null for a batch that failed)."""
    errors: BatchErrors | None
    """The first lines that cannot run (all of them are in the error file); for a
    failed batch, why it failed."""
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None


class BatchList(_Out):
    object: Literal["list"] = "list"
    data: list[BatchOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


def batch_out(client: Client, batch: store.BatchInfo) -> BatchOut:
    """The batch object.  A batch still running past its window expires here: its
    job is cancelled."""
    if batch.job_id is None:
        return _failed(batch)
    handle = client.job(batch.job_id)
    if batch.expired_at is None and time.time() > batch.expires_at:
        batch = _expire(client, handle, batch)
    status = handle.status()
    progress, job = status.progress, status.job
    state = progress.state
    counts = RequestCounts(
        total=progress.total if progress.total is not None else progress.enqueued,
        completed=progress.done,
        failed=progress.failed + progress.cancelled,
    )
    running = state == "running"
    finished = _int(job.created_at + status.elapsed) if state == "finished" else None
    cancelled = _int(job.cancelled_at) if batch.expired_at is None else None
    return BatchOut(
        **_common(batch),
        model=job.model,
        status=_status(state, batch),
        output_file_id=f"file-{job.id}-output" if not running and counts.completed else None,
        error_file_id=f"file-{job.id}-errors" if not running and counts.failed else None,
        in_progress_at=int(batch.created_at),
        finalizing_at=finished,
        completed_at=finished,
        failed_at=None,
        expired_at=_int(batch.expired_at),
        cancelling_at=cancelled,
        cancelled_at=cancelled,
        request_counts=counts,
    )


def _failed(batch: store.BatchInfo) -> BatchOut:
    return BatchOut(
        **_common(batch),
        model=None,
        status="failed",
        output_file_id=None,
        error_file_id=None,
        in_progress_at=None,
        finalizing_at=None,
        completed_at=None,
        failed_at=int(batch.created_at),
        expired_at=None,
        cancelling_at=None,
        cancelled_at=None,
        request_counts=RequestCounts(total=0, completed=0, failed=0),
    )


def _common(batch: store.BatchInfo) -> dict[str, Any]:
    """The fields that come from the batch row alone."""
    return {
        "id": batch.id,
        "endpoint": batch.endpoint,
        "errors": BatchErrors(data=[BatchErrorOut(**e) for e in batch.errors])
        if batch.errors
        else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "created_at": int(batch.created_at),
        "expires_at": int(batch.expires_at),
        "metadata": batch.batch_metadata,
    }


def _status(state: str, batch: store.BatchInfo) -> Status:
    if batch.expired_at is not None:
        return "expired"
    if state == "finished":
        return "completed"
    return "cancelled" if state == "cancelled" else "in_progress"


def _expire(client: Client, handle: JobHandle, batch: store.BatchInfo) -> store.BatchInfo:
    if handle.progress().state != "running":
        return batch
    now = time.time()
    handle.cancel()
    with client.db.begin() as conn:
        store.mark_expired(conn, batch.id, now)
        return store.get_batch(conn, batch.id) or batch


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)
