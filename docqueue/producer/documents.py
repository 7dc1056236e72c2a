"""Documents as producers hand them in, and the checks made before they are queued.

A document that cannot run (empty, whitespace only, unreadable) is still recorded:
it gets an error row naming the problem, so every input line is accounted for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from docqueue.protocol import ChatMessage, Document, document_problem, document_size
from docqueue.tasks import CHAT_TASKS


class InvalidDocument(ValueError):
    """A single submitted document that cannot be queued."""


@dataclass(frozen=True)
class Record:
    """One input document: its text (or chat messages), the caller's id, and the
    reason it could not be read, if it could not."""

    text: Any
    id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Checked:
    """A record ready for the ledger: ``doc`` is None when ``error`` says why not."""

    record_id: str | None
    doc: Document | None
    stored_text: str
    chat: bool
    truncated: bool
    error: str | None


def as_record(value: Any) -> Record:
    """Accept a string, a (id, text) pair, a mapping with "text" (and "id"), or a Record."""
    if isinstance(value, Record):
        return value
    if isinstance(value, str):
        return Record(value)
    if isinstance(value, Mapping):
        user_id = value.get("id")
        if "text" not in value:
            return Record(None, _str_id(user_id), "no 'text' field")
        return Record(value["text"], _str_id(user_id))
    if isinstance(value, tuple) and len(value) == 2:
        return Record(value[1], _str_id(value[0]))
    return Record(None, None, f"cannot read a document from {type(value).__name__}")


def _str_id(value: Any) -> str | None:
    return None if value is None else str(value)


def check(record: Record, *, task: str, max_chars: int) -> Checked:
    """Decide whether a record can be queued; cut over-long text (flagged truncated)."""
    if record.error:
        return _rejected(record, record.error)
    text = record.text
    if isinstance(text, list):
        return _check_chat(record, task, max_chars)
    if not isinstance(text, str):
        return _rejected(record, f"text is {type(text).__name__}, not a string")
    problem = document_problem(text, task)
    if problem:
        return _rejected(record, problem)
    truncated = len(text) > max_chars
    if truncated:
        text = text[:max_chars]
    return Checked(record.id, text, text, False, truncated, None)


def _check_chat(record: Record, task: str, max_chars: int) -> Checked:
    if task not in CHAT_TASKS:
        return _rejected(record, f"{task} takes text, not chat messages")
    try:
        messages = [ChatMessage.model_validate(m) for m in record.text]
    except ValidationError as exc:
        return _rejected(record, f"invalid chat messages: {exc.errors()[0]['msg']}")
    problem = document_problem(messages, task)
    if problem:
        return _rejected(record, problem)
    size = document_size(messages)
    if size > max_chars:
        return _rejected(record, f"chat has {size} characters, more than {max_chars}")
    stored = json.dumps([m.model_dump() for m in messages], ensure_ascii=False)
    return Checked(record.id, messages, stored, True, False, None)


def _rejected(record: Record, error: str) -> Checked:
    stored = record.text if isinstance(record.text, str) else ""
    return Checked(record.id, None, stored.replace("\x00", ""), False, False, error)


def stored_document(text: str, chat: bool) -> Document:
    """The document as the ledger keeps it, back in wire form (for resume)."""
    if chat:
        return [ChatMessage.model_validate(m) for m in json.loads(text)]
    return text
