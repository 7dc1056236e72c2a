"""The wire contract between producers and workers: queue names, Redis keys and the
message schema.  Everything that crosses Redis is defined here and nowhere else.

A message is a Celery task message (JSON only) for the task :data:`TASK_NAME` whose
single argument is a :class:`BatchMessage`: one job's chunk of documents for one
(task, model, params).  Bulk work travels as chunks; a backend's single document is
a one-item message on the model's interactive lane, which workers drain first.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from docqueue.tasks import CHAT_TASKS, Task

PROTOCOL_VERSION: Final = 1
TASK_NAME = "docqueue.batch"

Lane = Literal["bulk", "interactive"]

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN)]
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)


def is_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name))


def bulk_queue(task: str, model: str) -> str:
    return f"docqueue.{task}.{model}"


def interactive_queue(model: str) -> str:
    return f"docqueue.interactive.{model}"


def queue_name(task: str, model: str, lane: str) -> str:
    """The queue a job's messages go to: the model's interactive lane, or the bulk
    queue of its task and model."""
    return interactive_queue(model) if lane == "interactive" else bulk_queue(task, model)


def done_channel(job_id: str) -> str:
    """Redis pub/sub channel a worker publishes to after committing a job's results."""
    return f"docqueue:done:{job_id}"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    content: str


#: A document on the wire: plain text, or chat messages for a chat model.
Document = str | list[ChatMessage]


class BatchMessage(BaseModel):
    """One chunk of one job's documents, as carried by a message."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = PROTOCOL_VERSION
    job: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    task: Task
    model: ModelName
    params: dict[str, Any] = Field(default_factory=dict)
    lane: Lane = "bulk"
    #: (sequence number, document) pairs; sequence numbers are the job's item keys.
    items: list[tuple[Annotated[int, Field(ge=0)], Document]]
    #: Producer's clock (epoch seconds) when the chunk was published.
    enqueued_at: float


def document_problem(doc: Document, task: str) -> str | None:
    """Why a document cannot run as ``task``, or None.  Producers and workers share
    this one check; its size is checked apart (:func:`document_size`), since the
    producer cuts long text where a worker refuses it."""
    if isinstance(doc, str):
        if not doc:
            return "empty document"
        if not doc.strip():
            return "document is whitespace only"
        if "\x00" in doc:
            return "document contains NUL (\\x00) characters"
        return None
    if task not in CHAT_TASKS:
        return f"{task} takes text, not chat messages"
    if not doc:
        return "no chat messages"
    if any("\x00" in m.content for m in doc):
        return "document contains NUL (\\x00) characters"
    return None


def document_size(doc: Document) -> int:
    """Characters in a document (its messages' contents, for a chat)."""
    return len(doc) if isinstance(doc, str) else sum(len(m.content) for m in doc)


def params_key(params: dict[str, Any]) -> str:
    """Canonical form of validated parameters: items share a batch only when equal."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))
