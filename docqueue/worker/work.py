"""What flows between the engine's threads: documents waiting for the model, batches
the model ran, and rows decided without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from docqueue.db.results import ResultRow
from docqueue.worker.delivery import Delivery
from docqueue.worker.runners import Features

#: Documents share a batch only within one cohort: (lane, model, task, canonical params).
CohortKey = tuple[str, str, str, str]


class Envelope:
    """A delivery and how many of its documents still await a commit."""

    __slots__ = ("delivery", "job", "remaining", "enqueued_at", "task", "model")

    def __init__(
        self,
        delivery: Delivery,
        job: str,
        remaining: int,
        enqueued_at: float,
        task: str = "",
        model: str = "",
    ) -> None:
        self.delivery = delivery
        self.job = job
        self.remaining = remaining
        self.enqueued_at = enqueued_at
        #: What the message asked for (the metrics count its documents under it).
        self.task = task
        self.model = model


@dataclass
class WorkItem:
    """One tokenized document waiting for (or in) a batch."""

    job: str
    seq: int
    features: Features
    envelope: Envelope
    arrived: float
    failures: int = 0
    #: :func:`docqueue.protocol.document_digest` of the document (what a later job
    #: reuses its result by); None when the engine runs offline.
    text_hash: str | None = None

    @property
    def length(self) -> int:
        return self.features.length


@dataclass
class Computed:
    """A batch the model ran (``raw``) or could not run (``error``), for the writer."""

    key: CohortKey
    items: list[WorkItem]
    raw: Any = None
    started_at: float = 0.0
    finished_at: float = 0.0
    #: Why the batch's documents could not be run (their rows become errors).
    error: str | None = None
    #: A CUDA event the host copy of ``raw`` is complete at (None: already there).
    ready: Any = None


@dataclass
class Dropped:
    """Documents of a job cancelled or deleted while they waited: no rows, but their
    deliveries still count them as done."""

    key: CohortKey
    items: list[WorkItem]


@dataclass
class Rejected:
    """Rows decided without the model (bad input), for the writer."""

    rows: list[tuple[ResultRow, Envelope]]


def error_row(
    envelope: Envelope,
    seq: int,
    error: str,
    worker_id: str,
    *,
    attempts: int = 1,
    truncated: bool = False,
) -> ResultRow:
    """The error row of one document of ``envelope``."""
    return ResultRow(
        job_id=envelope.job,
        seq=seq,
        ok=False,
        error=error,
        truncated=truncated,
        worker_id=worker_id,
        enqueued_at=envelope.enqueued_at,
        attempts=attempts,
    )
