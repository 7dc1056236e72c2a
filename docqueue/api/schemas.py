"""What the API takes and gives, as pydantic models (and so in /openapi.json).

Requests are strict (an unknown field is an error, not ignored); the checks that
need the workers or the ledger (a model no worker has served, a task the model
cannot do, parameters out of range) are the Client's, at submit.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Json,
    StringConstraints,
    Tag,
)

from docqueue.db.jobs import JobSummary
from docqueue.producer.client import JobStatus, ServedModel
from docqueue.protocol import ChatMessage, ModelName
from docqueue.tasks import Task


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("contains NUL (\\x00) characters")
    return text


#: Text a database column can hold: no NUL characters.
NoNul = AfterValidator(_no_nul)
JobName = Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul]
UserId = Annotated[str, StringConstraints(max_length=512), NoNul] | int
#: Text, or chat messages (for generate, with a model that has a chat template).
Text = str | list[ChatMessage]
Params = dict[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentIn(_Strict):
    """A document with your id for it (returned with its result)."""

    id: UserId | None = None
    text: Text


def _document_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "document"


#: A document: a string, or an object with ``text`` and ``id``.
DocumentItem = Annotated[
    Annotated[str, Tag("text")] | Annotated[DocumentIn, Tag("document")],
    Discriminator(_document_kind),
]


class JobCreate(_Strict):
    task: Task
    #: The model's name, as the workers serve it.
    model: ModelName
    params: Params = Field(default_factory=dict)
    #: Your name for the job, to find it by (GET /api/jobs?name=...).
    name: JobName | None = None
    documents: list[DocumentItem] = Field(min_length=1)

    def documents_for_client(self) -> list[Any]:
        """The documents as :meth:`Client.submit_many` takes them."""
        return [
            doc if isinstance(doc, str) else {"id": doc.id, "text": _plain(doc.text)}
            for doc in self.documents
        ]


class DocumentCreate(_Strict):
    task: Task
    model: ModelName
    params: Params = Field(default_factory=dict)
    text: Text
    #: Your id for the document.
    id: UserId | None = None

    def text_for_client(self) -> Any:
        return _plain(self.text)


def _plain(text: Text) -> Any:
    return text if isinstance(text, str) else [m.model_dump() for m in text]


class UploadFields(_Strict):
    """The form fields sent with an uploaded file (multipart/form-data)."""

    task: Task
    model: ModelName
    #: Task parameters as a JSON object, e.g. {"labels": ["billing", "outage"]}.
    params: Json[Params] | None = None
    name: JobName | None = None
    #: The JSONL field or CSV column holding the text.
    text_field: FieldName = "text"
    #: The JSONL field or CSV column holding your id for each document.
    id_field: FieldName = "id"


# --- responses ---------------------------------------------------------------------


State = Literal["running", "finished", "cancelled"]
DocumentStatus = Literal["pending", "done", "failed", "cancelled"]


class ProgressOut(BaseModel):
    #: Documents in the job; None while they are still being added.
    total: int | None
    enqueued: int
    done: int
    failed: int
    cancelled: int
    pending: int


class ErrorCounts(BaseModel):
    #: Documents with an error row.
    failed: int
    #: Of those, refused before they were queued (unreadable, empty).
    refused: int
    #: Of those, failed on a worker.
    on_workers: int


class JobBrief(BaseModel):
    """A job as listed: what it is and how far it got."""

    id: str
    name: str | None
    state: State
    task: str
    model: str
    lane: str
    #: The uploaded file's name (None for documents sent as JSON).
    source: str | None
    created_at: float
    cancelled_at: float | None
    progress: ProgressOut

    @classmethod
    def of(cls, summary: JobSummary) -> JobBrief:
        job, progress = summary.job, summary.progress
        return cls(
            id=job.id,
            name=job.name,
            state=progress.state,
            task=job.task,
            model=job.model,
            lane=job.lane,
            source=job.source,
            created_at=job.created_at,
            cancelled_at=job.cancelled_at,
            progress=_progress(progress),
        )


def _progress(progress: Any) -> ProgressOut:
    return ProgressOut(
        total=progress.total,
        enqueued=progress.enqueued,
        done=progress.done,
        failed=progress.failed,
        cancelled=progress.cancelled,
        pending=progress.pending,
    )


class JobOut(JobBrief):
    """A job's status: progress, pace and errors, and what stops it (if anything)."""

    params: Params
    #: Seconds since the job was created, or from then to its last result.
    elapsed_seconds: float
    #: Documents computed per second (None: none yet).
    docs_per_second: float | None
    #: Seconds until the pending documents are done at that pace (None: unknown).
    eta_seconds: float | None
    errors: ErrorCounts
    #: Live workers serving the job's model and task.
    workers: int
    #: Why no live worker runs the job (a model whose workers are gone), if so.
    warning: str | None

    @classmethod
    def of_status(cls, status: JobStatus) -> JobOut:
        brief = JobBrief.of(JobSummary(status.job, status.progress))
        progress = status.progress
        on_workers = max(0, status.computed - progress.done)
        return cls(
            **brief.model_dump(),
            params=status.job.params,
            elapsed_seconds=status.elapsed,
            docs_per_second=status.rate,
            eta_seconds=status.eta,
            errors=ErrorCounts(
                failed=progress.failed,
                refused=max(0, progress.failed - on_workers),
                on_workers=on_workers,
            ),
            workers=len(status.workers),
            warning=status.problem,
        )


class JobList(BaseModel):
    data: list[JobBrief]


class ResultsPage(BaseModel):
    #: Documents in input order: id, seq, status, then the task's output fields
    #: (or error), as `docqueue export` writes them.
    data: list[dict[str, Any]]
    #: Pass as ?cursor= for the next page; None when there is no more.
    next_cursor: str | None


class DocumentOut(BaseModel):
    job_id: str
    status: DocumentStatus
    #: The result row (id, seq, status, output fields or error); None while pending.
    result: dict[str, Any] | None
    #: Why no live worker runs it (a model whose workers are gone), if so.
    warning: str | None = None


class Cancelled(BaseModel):
    id: str
    #: Documents this call cancelled (0 for a job that had finished).
    cancelled: int
    state: State


class Deleted(BaseModel):
    id: str
    #: Documents deleted with the job.
    documents: int


class ModelOut(BaseModel):
    name: str
    tasks: list[str]
    workers: int
    devices: list[str]

    @classmethod
    def of(cls, served: ServedModel) -> ModelOut:
        return cls(
            name=served.name, tasks=served.tasks, workers=served.workers, devices=served.devices
        )


class ModelList(BaseModel):
    data: list[ModelOut]
