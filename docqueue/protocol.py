"""The wire contract between producers and workers: queue names, Redis keys and the
message schema.  Everything that crosses Redis is defined here and nowhere else.

A message is a Celery task message (JSON only) for the task :data:`TASK_NAME` whose
single argument is a :class:`BatchMessage`: one job's chunk of documents for one
(task, model, params).  Bulk work travels as chunks; a backend's single document is
a one-item message on the model's interactive lane, which workers drain first.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StringConstraints

from docqueue.tasks import Task, fields_of, names, takes_chat, takes_text

PROTOCOL_VERSION: Final = 1
TASK_NAME = "docqueue.batch"

Lane = Literal["bulk", "interactive"]

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ModelName = Annotated[str, StringConstraints(strict=True, pattern=MODEL_NAME_PATTERN)]
#: The largest sequence number: ``dq_items.seq`` is an SQL INTEGER (32 bits signed).
MAX_SEQ: Final = 2**31 - 1
#: A sequence number on the wire: a JSON integer in range, never "0", 0.0 or true.
Seq = Annotated[int, Strict(), Field(ge=0, le=MAX_SEQ)]
#: The longest document id the ledger holds (``dq_items.user_id``; PostgreSQL
#: enforces it, SQLite does not).
MAX_ID_CHARS: Final = 512
StrictText = Annotated[str, Strict()]
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


def queue_of(name: str) -> tuple[str, Lane, str] | None:
    """(model, lane, task) of a queue's name (task "" for an interactive lane), or
    None for a name that is not a docqueue queue's."""
    prefix, _, rest = name.partition(".")
    first, _, model = rest.partition(".")
    if prefix != "docqueue" or not is_model_name(model):
        return None
    if first == "interactive":
        return model, "interactive", ""
    return (model, "bulk", first) if first in names() else None


def done_channel(job_id: str) -> str:
    """Redis pub/sub channel a worker publishes to after committing a job's results."""
    return f"docqueue:done:{job_id}"


#: The pattern of every job's done channel (one subscription for all of them).
DONE_PATTERN = done_channel("*")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=32)]
    content: StrictText


#: A document of named text fields (a query and its passage), for the tasks whose
#: declared input shape names them (:func:`docqueue.tasks.fields_of`).
Fields = dict[str, str]
#: A document on the wire: plain text, chat messages for a chat model, or fields.
Document = str | list[ChatMessage] | Fields


def _exactly_this_version(value: Any) -> Any:
    # Literal[1] alone takes true and 1.0 for 1
    if type(value) is not int or value != PROTOCOL_VERSION:
        raise ValueError(f"protocol version {value!r}; this worker speaks {PROTOCOL_VERSION}")
    return value


class BatchMessage(BaseModel):
    """One chunk of one job's documents, as carried by a message.

    Strict field by field (nothing is coerced: a sequence number "0", 0.0 or true
    is refused), yet validated from plain decoded JSON: the items' pairs arrive as
    lists and become tuples, chat messages arrive as objects."""

    model_config = ConfigDict(extra="forbid")

    v: Annotated[Literal[1], BeforeValidator(_exactly_this_version)] = PROTOCOL_VERSION
    job: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{32}$")]
    task: Task
    model: ModelName
    params: Annotated[dict[str, Any], Strict()] = Field(default_factory=dict)
    lane: Lane = "bulk"
    #: (sequence number, document) pairs; sequence numbers are the job's item keys.
    items: Annotated[
        list[tuple[Seq, StrictText | list[ChatMessage] | dict[StrictText, StrictText]]], Strict()
    ]
    #: Producer's clock (epoch seconds) when the chunk was published.
    enqueued_at: Annotated[float, Strict(), Field(allow_inf_nan=False)]


def document_problem(doc: Document, task: str) -> str | None:
    """Why a document cannot run as ``task``, or None.  Producers and workers share
    this one check; its size is checked apart (:func:`document_size`), since the
    producer cuts long text where a worker refuses it."""
    if isinstance(doc, str):
        if not takes_text(task):
            shape = fields_of(task)
            fields = ", ".join(shape.fields) if shape else "fields"
            return f"{task} takes an object of fields ({fields}), not text"
        if not doc:
            return "empty document"
        if not doc.strip():
            return "document is whitespace only"
        if "\x00" in doc:
            return "document contains NUL (\\x00) characters"
        return None
    if isinstance(doc, dict):
        return fields_problem(doc, task)
    if not takes_chat(task):
        return f"{task} takes text, not chat messages"
    if not doc:
        return "no chat messages"
    if any("\x00" in m.content for m in doc):
        return "document contains NUL (\\x00) characters"
    return None


def fields_problem(doc: Fields, task: str) -> str | None:
    """Why a document of fields cannot run as ``task`` (its shape names the fields
    it takes), or None."""
    shape = fields_of(task)
    if shape is None:
        return f"{task} takes text, not an object of fields"
    allowed = (*shape.fields, *shape.optional)
    for name in doc:
        if name not in allowed:
            shown = name if len(name) <= 100 else name[:100] + "..."
            return f"unknown field {shown!r}: {task} takes {', '.join(allowed)}"
    for name in shape.fields:
        value = doc.get(name)
        if value is None:
            return f"no {name!r} field: {task} takes {', '.join(shape.fields)}"
        if not value.strip():
            return f"field {name!r} is {'empty' if not value else 'whitespace only'}"
    if any("\x00" in value for value in doc.values()):
        return "document contains NUL (\\x00) characters"
    return None


def document_size(doc: Document) -> int:
    """Characters in a document (its messages' contents, for a chat; its fields'
    values, for fields)."""
    if isinstance(doc, str):
        return len(doc)
    if isinstance(doc, dict):
        return sum(len(v) for v in doc.values())
    return sum(len(m.content) for m in doc)


def params_key(params: dict[str, Any]) -> str:
    """Canonical form of validated parameters: items share a batch only when equal."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def document_digest(doc: Document) -> str:
    """SHA-256 (hex) of a document in a canonical form: what ``dq_items.digest``
    holds, so that a worker can tell whether a message carries the document its
    job holds without reading the text back.  Text, chat and fields never collide
    (each form has its own prefix); chat messages and fields are hashed as
    canonical JSON."""
    if isinstance(doc, str):
        data = b"text\0" + doc.encode("utf-8", errors="surrogatepass")
    elif isinstance(doc, dict):
        data = b"fields\0" + json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    else:
        messages = [{"role": m.role, "content": m.content} for m in doc]
        data = b"chat\0" + json.dumps(messages, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


def stored_document(text: str, as_json: bool) -> Document:
    """A document as the ledger keeps it (its text, or its chat or fields as JSON:
    the ledger's ``chat`` flag), back in wire form: for a worker comparing a message
    with it, and for resume."""
    if not as_json:
        return text
    value = json.loads(text)
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return [ChatMessage.model_validate(m) for m in value]


def task_argument(body: Any) -> Any:
    """The single argument of a decoded Celery task message for :data:`TASK_NAME`
    (protocol 2: ``[args, kwargs, embed]``; protocol 1: a dict with ``args`` and
    ``kwargs``).  Raises ValueError naming what is malformed."""
    if isinstance(body, list):
        if len(body) != 3:
            raise ValueError(f"message body has {len(body)} parts, not [args, kwargs, embed]")
        args, kwargs, embed = body
        if not isinstance(embed, dict):
            raise ValueError(f"message embed is {json_type(embed)}, not an object")
    elif isinstance(body, dict):
        args, kwargs = body.get("args"), body.get("kwargs", {})
    else:
        raise ValueError(f"message body is {json_type(body)}, not a task message")
    if not isinstance(args, list):
        raise ValueError(f"message args is {json_type(args)}, not a list")
    if len(args) != 1:
        raise ValueError(f"message args has {len(args)} values; {TASK_NAME} takes one")
    if not isinstance(kwargs, dict):
        raise ValueError(f"message kwargs is {json_type(kwargs)}, not an object")
    if kwargs:
        raise ValueError(f"message kwargs {sorted(kwargs)[:3]}: {TASK_NAME} takes none")
    return args[0]


def json_type(value: Any) -> str:
    """What a JSON value is, for a person: \"a number\", \"null\", \"an object\"."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
