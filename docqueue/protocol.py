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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

PROTOCOL_VERSION = 1
TASK_NAME = "docqueue.batch"

Task = Literal["classify", "summarize", "generate", "embed"]
TASKS: tuple[str, ...] = ("classify", "summarize", "generate", "embed")
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


def text_problem(text: str) -> str | None:
    """Why a text document cannot be processed, or None; producer and worker share it."""
    if not text:
        return "empty document"
    if not text.strip():
        return "document is whitespace only"
    if "\x00" in text:
        return "document contains NUL (\\x00) characters"
    return None


def params_key(params: dict[str, Any]) -> str:
    """Canonical form of validated parameters: items share a batch only when equal."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))
