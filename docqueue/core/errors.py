"""The application core's errors, each of one kind of :mod:`docqueue.errors`."""

from __future__ import annotations

from docqueue.config import redact
from docqueue.db import DatabaseUnavailable as DatabaseUnavailable
from docqueue.errors import Conflict, NotFound, Refused, Unavailable, one_line
from docqueue.params import InvalidParams

# DatabaseUnavailable: the database did not answer (SQLAlchemy's OperationalError);
# entry points report it as the database being unavailable.


class DocumentFailed(Conflict, RuntimeError):
    """The document got an error row instead of a result."""

    def __init__(self, job_id: str, seq: int, error: str) -> None:
        super().__init__(f"document {seq} of job {job_id} failed: {error}")
        self.job_id, self.seq, self.error = job_id, seq, error


class DocumentCancelled(Conflict, RuntimeError):
    """The document's job was cancelled before it was computed."""

    def __init__(self, job_id: str, seq: int) -> None:
        super().__init__(f"document {seq} of job {job_id} was cancelled")
        self.job_id, self.seq = job_id, seq


class UnknownJob(NotFound, KeyError):
    """No job with this id in the database."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job {self.job_id}"


class EnqueueStopped(Unavailable, RuntimeError):
    """A service failed part way through adding or publishing a job's documents:
    ``saved`` of them are in SQL, ``published`` of those were published by this
    call.  :meth:`Client.resume` (``docqueue resume JOB``) completes the job once
    the service is back."""

    #: What failed, as the message names it.
    failed = "could not reach the service"
    service = "the service"

    def __init__(self, job_id: str, saved: int, published: int, cause: BaseException) -> None:
        self.job_id, self.saved, self.published = job_id, saved, published
        self.cause = one_line(cause)
        super().__init__(self.explain(f"`docqueue resume {job_id}` (or Client.resume)"))

    def explain(self, command: str) -> str:
        """The message, naming ``command`` as the way to complete the job."""
        return (
            f"{self.failed} ({self.cause}): {self.saved} documents are saved in SQL as job "
            f"{self.job_id}, {self.published} of them published; run {command} once "
            f"{self.service} is reachable, to publish the rest and add the documents not "
            "saved yet"
        )


class PublishFailed(EnqueueStopped):
    """Redis refused a message after its documents were saved in SQL."""

    failed = "could not publish to Redis"
    service = "Redis"


class SaveFailed(EnqueueStopped):
    """The database failed while documents were being added to a job that it holds."""

    failed = "could not save documents in the database"
    service = "the database"


class NothingQueued(Unavailable, RuntimeError):
    """A service failed part way through a job that had to be whole (one request's
    documents): the job was taken back, nothing is queued, the caller sends again."""

    def __init__(self, stopped: EnqueueStopped) -> None:
        self.stopped = stopped
        self.service = stopped.service
        cause = redact(stopped.cause)
        super().__init__(
            f"{stopped.service} is unavailable ({stopped.failed}: {cause}): nothing was "
            f"queued; send the request again once {stopped.service} answers"
        )


class AllRefused(Refused, ValueError):
    """Every document of a job was refused at the door: the job was taken back."""

    def __init__(self, total: int, first_seq: int, first_error: str) -> None:
        super().__init__(
            f"all {total} documents were refused (document {first_seq}: {first_error}); "
            "nothing was queued"
        )


class JobFailed(Conflict, RuntimeError):
    """The job failed as a whole: its producer stopped before all its documents were
    in (its hold on the job lapsed), and a worker closed it.  ``failure`` says what
    is kept and how to resubmit it."""

    def __init__(self, job_id: str, failure: str) -> None:
        super().__init__(f"job {job_id} failed: {failure}")
        self.job_id, self.failure = job_id, failure


class NoRedis(Refused, ValueError):
    """The client was made without a Redis URL and was asked to publish or wait."""

    def __init__(self) -> None:
        super().__init__("no Redis: set DOCQUEUE_REDIS_URL or pass Client(redis_url=...)")


class UnsupportedTask(InvalidParams):
    """Every live worker of the model says it cannot do the task."""

    param = "task"


class KeyReused(Refused, ValueError):
    """An idempotency key already names a job that another request created."""

    param = "Idempotency-Key"

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was used for another request (job {job_id}); "
            "use a new key for a new request"
        )
        self.key, self.job_id = key, job_id


class UnknownModel(Refused, ValueError):
    """A model no worker has served and ``DOCQUEUE_MODELS`` does not declare."""

    param = "model"

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(
            f"unknown model {model}: no worker has served it and DOCQUEUE_MODELS does not "
            f"declare it (known models: {', '.join(known) or 'none'})"
        )
        self.model, self.known = model, known


class UnknownFile(NotFound, KeyError):
    """No file with this id (an upload, or the output of a batch that exists)."""

    param = "file_id"

    def __init__(self, file_id: str, made: bool = False) -> None:
        super().__init__(file_id)
        self.file_id, self.made = file_id, made

    def __str__(self) -> str:
        return f"no file {self.file_id[:80]!r}" + (" (no such batch)" if self.made else "")


class MadeFile(Conflict, ValueError):
    """A batch's output or error file: its job's results, deleted with the job only."""

    param = "file_id"

    def __init__(self, file_id: str) -> None:
        super().__init__(
            f"{file_id} is made from its batch's results: delete the job "
            "(DELETE /api/jobs/{job_id}) to delete them"
        )


class WrongPurpose(Refused, ValueError):
    """A file uploaded for another purpose than ``batch``."""

    param = "purpose"


class UnknownBatch(NotFound, KeyError):
    """No batch with this id."""

    param = "batch_id"

    def __init__(self, batch_id: str) -> None:
        super().__init__(batch_id)
        self.batch_id = batch_id

    def __str__(self) -> str:
        return f"no batch {self.batch_id[:80]!r}"


class BadBatch(Refused, ValueError):
    """A batch that cannot be created as asked; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class InputFileDeleted(Conflict, RuntimeError):
    """The batch's input file was deleted while the batch was being created from it."""

    param = "input_file_id"

    def __init__(self, file_id: str) -> None:
        super().__init__(
            f"input_file_id: file {file_id} was deleted while the batch was created from "
            "it; nothing was created"
        )
