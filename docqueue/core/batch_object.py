"""OpenAI's batch object: a batch row and its job's state, read now.

A batch's status, and when it is in each:

- ``validating``: never seen; :meth:`.batches.Batches.create` reads and queues every line
  before it returns.
- ``failed`` (``failed_at``, ``errors``): no line of the input file could run.
  Such a batch has no job.  (A model no worker has served is refused at once,
  :class:`~docqueue.core.errors.UnknownModel`, nothing created.)
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
  them as ``batch_expired``.  :meth:`.batches.Batches.expire_due` expires them: reading or
  listing batches calls it, and so does the API server every
  ``api_batch_sweep_interval`` seconds, so a batch expires without anyone asking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from docqueue.core.jobs import JobStatus
from docqueue.db.files import BatchInfo

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


@dataclass(frozen=True)
class RequestCounts:
    total: int
    #: Requests that succeeded (lines of the output file).
    completed: int
    #: Requests that failed, were refused or were cancelled (lines of the error file).
    failed: int


@dataclass(frozen=True)
class Batch:
    """OpenAI's batch object, read now: the batch row and its job's state."""

    row: BatchInfo
    #: The docqueue model that runs the lines (None for a batch that failed).
    model: str | None
    status: Status
    output_file_id: str | None
    error_file_id: str | None
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    #: Returned by a create with an idempotency key an earlier create used.
    replayed: bool = False

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def endpoint(self) -> str:
        return self.row.endpoint

    @property
    def input_file_id(self) -> str:
        return self.row.input_file_id

    @property
    def completion_window(self) -> str:
        return self.row.completion_window

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The first lines that cannot run (all are in the error file); for a failed
        batch, why it failed."""
        return self.row.errors

    @property
    def metadata(self) -> dict[str, str] | None:
        return self.row.batch_metadata

    @property
    def created_at(self) -> int:
        return int(self.row.created_at)

    @property
    def expires_at(self) -> int:
        return int(self.row.expires_at)

    @classmethod
    def of(cls, batch: BatchInfo, status: JobStatus, replayed: bool = False) -> Batch:
        """The batch of a row with a job, whose state ``status`` is."""
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
        return cls(
            row=batch,
            model=job.model,
            status=_status(state, batch),
            output_file_id=f"file-{job.id}-output" if not running and counts.completed else None,
            error_file_id=f"file-{job.id}-errors" if not running and counts.failed else None,
            in_progress_at=int(batch.created_at),
            finalizing_at=finished,
            completed_at=finished,
            failed_at=_int(job.failed_at),
            expired_at=_int(batch.expired_at),
            cancelling_at=cancelled,
            cancelled_at=cancelled,
            request_counts=counts,
            replayed=replayed,
        )

    @classmethod
    def failed(cls, batch: BatchInfo) -> Batch:
        """A batch that failed validation: no job, no files, zero counts."""
        return cls(
            row=batch,
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


def _status(state: str, batch: BatchInfo) -> Status:
    if batch.expired_at is not None:
        return "expired"
    if state == "finished":
        return "completed"
    if state == "failed":  # its producer stopped before all its requests were in
        return "failed"
    return "cancelled" if state == "cancelled" else "in_progress"


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)
