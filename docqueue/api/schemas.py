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

from docqueue.core.jobs import JobSummary
from docqueue.producer.client import JobStatus, ServedModel
from docqueue.protocol import ChatMessage, ModelName
from docqueue.tasks import ParamsIn, ResultRow, Task


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("contains NUL (\\x00) characters")
    return text


#: Text a database column can hold: no NUL characters.
NoNul = AfterValidator(_no_nul)
JobName = Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul]
UserId = (
    Annotated[str, StringConstraints(max_length=512), NoNul]
    | Annotated[int, Field(ge=-(2**63), lt=2**63)]
)
CallbackUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048), NoNul]
#: Text, chat messages (for generate, with a model that has a chat template), or
#: named text fields (for rerank: {"query": ..., "passage": ...}).
Text = str | list[ChatMessage] | dict[FieldName, str]
Params = ParamsIn


class _Out(BaseModel):
    # The docstrings under fields are their descriptions in /openapi.json.
    model_config = ConfigDict(use_attribute_docstrings=True)


class _Strict(_Out):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class DocumentIn(_Strict):
    """A document with your id for it (returned with its result)."""

    id: UserId | None = None
    """Your id for the document (several documents may share one: they are flagged)."""
    text: Text
    """The text, chat messages for generate with a model that has a chat template, or
    fields for a task that takes them (rerank: {"query": ..., "passage": ...})."""


def _document_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "document"


#: A document: a string, or an object with ``text`` and ``id``.
DocumentItem = Annotated[
    Annotated[str, Tag("text")] | Annotated[DocumentIn, Tag("document")],
    Discriminator(_document_kind),
]


class JobCreate(_Strict):
    task: Task
    model: ModelName
    """The model's name, as the workers serve it (GET /api/models)."""
    params: Params = Field(default_factory=dict)
    """Task parameters, e.g. {"labels": ["billing", "outage"]} for classify."""
    name: JobName | None = None
    """Your name for the job, to find it by (GET /api/jobs?name=...)."""
    reuse: bool = False
    """Copy the result of an earlier document with the same text, task, model (the
    same weights and dtype, as its worker fingerprints them) and parameters instead
    of computing it again."""
    documents: list[DocumentItem] = Field(min_length=1)
    """Strings, or objects with text and id."""
    callback_url: CallbackUrl | None = None
    """Where to POST the job's summary when it finishes (a host the operator allowed
    in DOCQUEUE_WEBHOOK_HOSTS); signed, see the README's Webhooks section."""

    def documents_for_client(self) -> list[Any]:
        """The documents as :meth:`Client.submit_many` takes them."""
        return for_client(self.documents)


def for_client(documents: list[DocumentItem]) -> list[Any]:
    """Documents as :meth:`Client.submit_many` takes them."""
    return [
        doc if isinstance(doc, str) else {"id": doc.id, "text": _plain(doc.text)}
        for doc in documents
    ]


class DocumentCreate(_Strict):
    task: Task
    model: ModelName
    """The model's name, as the workers serve it (GET /api/models)."""
    params: Params = Field(default_factory=dict)
    """Task parameters, e.g. {"labels": ["billing", "outage"]} for classify."""
    text: Text
    """The text, chat messages for generate with a model that has a chat template, or
    fields for a task that takes them (rerank: {"query": ..., "passage": ...})."""
    id: UserId | None = None
    """Your id for the document."""

    def text_for_client(self) -> Any:
        return _plain(self.text)


def _plain(text: Text) -> Any:
    if isinstance(text, (str, dict)):
        return text
    return [m.model_dump() for m in text]


class UploadFields(_Strict):
    """The form fields sent with an uploaded file (multipart/form-data)."""

    task: Task
    model: ModelName
    """The model's name, as the workers serve it (GET /api/models)."""
    params: Json[Params] | None = None
    """Task parameters as a JSON object, e.g. {"labels": ["billing", "outage"]}."""
    name: JobName | None = None
    """Your name for the job, to find it by (GET /api/jobs?name=...)."""
    text_field: FieldName = "text"
    """The JSONL field or CSV column holding the text."""
    id_field: FieldName = "id"
    """The JSONL field or CSV column holding your id for each document."""
    callback_url: CallbackUrl | None = None
    """Where to POST the job's summary when it finishes (a host the operator allowed
    in DOCQUEUE_WEBHOOK_HOSTS); signed, see the README's Webhooks section."""
    reuse: bool = False
    """Copy the result of an earlier document with the same text, task, model (the
    same weights and dtype, as its worker fingerprints them) and parameters instead
    of computing it again."""


# --- responses ---------------------------------------------------------------------


State = Literal["running", "finished", "cancelled", "failed"]
DocumentStatus = Literal["pending", "done", "failed", "cancelled"]


class ProgressOut(_Out):
    total: int | None
    """Documents in the job; None while they are still being added."""
    enqueued: int
    done: int
    failed: int
    cancelled: int
    pending: int
    reused: int
    """Of the done documents, those whose result was copied from an earlier one."""


class ErrorCounts(_Out):
    failed: int
    """Documents with an error row."""
    refused: int
    """Of those, refused before they were queued (unreadable, empty)."""
    on_workers: int
    """Of those, failed on a worker."""


class JobBrief(_Out):
    """A job as listed: what it is and how far it got."""

    id: str
    name: str | None
    state: State
    task: str
    model: str
    model_label: str | None
    """The model as the person named it where ``model`` is an internal name
    (``docqueue annotate``'s: ``minilm``, a directory, a hub id); shown instead."""
    lane: str
    source: str | None
    """The uploaded file's name (None for documents sent as JSON)."""
    created_at: float
    cancelled_at: float | None
    failure: str | None
    """Why the job failed as a whole (state failed): its producer stopped before all its
    documents were in; what is kept, and how to resubmit it."""
    reuse: bool
    """Whether the job copies earlier results of the same text, model and parameters."""
    group_id: str | None
    """The multi-task group the job belongs to (POST /api/job-groups), if any."""
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
            model_label=job.model_label,
            lane=job.lane,
            source=job.source,
            created_at=job.created_at,
            cancelled_at=job.cancelled_at,
            failure=progress.failure,
            reuse=job.reuse,
            group_id=job.group_id,
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
        reused=progress.reused,
    )


class JobOut(JobBrief):
    """A job's status: progress, pace and errors, and what stops it (if anything)."""

    params: Params
    elapsed_seconds: float
    """Seconds since the job was created, or from then to its last result."""
    docs_per_second: float | None
    """Documents computed per second (None: none yet)."""
    eta_seconds: float | None
    """Seconds until the pending documents are done at that pace (None: unknown)."""
    errors: ErrorCounts
    workers: int
    """Live workers serving the job's model and task."""
    warning: str | None
    """Why no live worker runs the job (a model whose workers are gone), if so."""

    @classmethod
    def of_status(cls, status: JobStatus) -> JobOut:
        brief = JobBrief.of(JobSummary(status.job, status.progress))
        return cls(
            **brief.model_dump(),
            params=status.job.params,
            elapsed_seconds=status.elapsed,
            docs_per_second=status.rate,
            eta_seconds=status.eta,
            errors=ErrorCounts(**status.error_counts()),
            workers=len(status.workers),
            warning=status.problem,
        )


class JobList(_Out):
    data: list[JobBrief]


class ResultsPage(_Out):
    data: list[ResultRow]
    """Documents in input order: id, seq, status, then the task's output fields (or
    error), as `docqueue export` writes them."""
    next_cursor: str | None
    """Pass as ?cursor= for the next page; None when there is no more."""


class DocumentOut(_Out):
    job_id: str
    status: DocumentStatus
    result: ResultRow | None
    """The result row (id, seq, status, output fields or error); None while pending."""
    warning: str | None = None
    """Why no live worker runs it (a model whose workers are gone), if so."""


class Cancelled(_Out):
    id: str
    cancelled: int
    """Documents this call cancelled (0 for a job that had finished)."""
    state: State


class Deleted(_Out):
    id: str
    documents: int
    """Documents deleted with the job."""


class ModelOut(_Out):
    name: str
    tasks: list[str]
    workers: int
    devices: list[str]

    @classmethod
    def of(cls, served: ServedModel) -> ModelOut:
        return cls(
            name=served.name, tasks=served.tasks, workers=served.workers, devices=served.devices
        )


class ModelList(_Out):
    data: list[ModelOut]


# --- job groups: several tasks over the same documents ------------------------------


class GroupTask(_Strict):
    task: Task
    model: ModelName
    """The model's name, as the workers serve it (GET /api/models)."""
    params: Params = Field(default_factory=dict)


class GroupCreate(_Strict):
    tasks: list[GroupTask] = Field(min_length=1, max_length=16)
    """One job per task, each on its own queue; the results are joined per document."""
    name: JobName | None = None
    """Your name for the group's jobs (GET /api/jobs?name=...)."""
    reuse: bool = False
    """Copy the result of an earlier document with the same text, task, model and
    parameters instead of computing it again."""
    documents: list[DocumentItem] = Field(min_length=1)
    """Strings, or objects with text and id."""

    def documents_for_client(self) -> list[Any]:
        return for_client(self.documents)


class GroupOut(_Out):
    """A job group: each task's job (its status), under the label its results take."""

    id: str
    labels: list[str]
    """Each task's key in a joined result row, in the order of the tasks."""
    jobs: list[JobOut]
    state: State
    """running until every job is finished (cancelled when one was cancelled)."""
