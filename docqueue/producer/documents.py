"""Documents as producers hand them in, and the checks made before they are queued.

A document that cannot run (empty, whitespace only, unreadable) is still recorded:
it gets an error row naming the problem, so every input line is accounted for.
What cannot be stored at all (a lone surrogate, which no UTF-8 encoder takes; NUL,
which PostgreSQL refuses; an id longer than its column) is refused the same way, on
every database alike, and never reaches SQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from docqueue.errors import Refused
from docqueue.jobspec import MAX_LABEL_CHARS, MAX_NAME_CHARS, MAX_SOURCE_CHARS
from docqueue.protocol import (
    MAX_ID_CHARS,
    ChatMessage,
    Document,
    document_problem,
    document_size,
    json_type,
)
from docqueue.tasks import takes_chat

#: JSON's "\ud800" decodes to half a surrogate pair, which nothing can encode.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: What SQL cannot hold in any text column.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class InvalidDocument(Refused, ValueError):
    """A single submitted document that cannot be queued."""

    param = "text"


@dataclass(frozen=True)
class Record:
    """One input document: its text (or chat messages), the caller's id, and the
    reason it could not be read, if it could not."""

    text: Any
    id: str | None = None
    error: str | None = None
    #: The input row as read (every field, the text and id included): what annotate
    #: writes beside the annotations.  Never queued or stored.
    fields: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Checked:
    """A record ready for the ledger: ``doc`` is None when ``error`` says why not."""

    record_id: str | None
    doc: Document | None
    stored_text: str
    #: Whether ``stored_text`` is JSON (chat messages or fields): the ledger's
    #: ``chat`` column.
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


def lone_surrogate(value: Any) -> str | None:
    """Where a text, or a chat's messages, hold a lone surrogate, or None."""
    if isinstance(value, str):
        return _surrogate_in(value)
    if isinstance(value, list):
        for number, message in enumerate(value, start=1):
            fields = message.values() if isinstance(message, Mapping) else [message]
            for field in fields:
                if isinstance(field, str) and (where := _surrogate_in(field)):
                    return f"message {number}: {where}"
    return None


def _surrogate_in(text: str) -> str | None:
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return f"lone surrogate \\u{ord(found.group()):04x} at character {found.start() + 1}"


def id_problem(user_id: str | None) -> str | None:
    """Why an id cannot be stored (the same on every database), or None."""
    return None if user_id is None else _unstorable("id", user_id, MAX_ID_CHARS)


def name_problem(name: str | None) -> str | None:
    """Why a job's name cannot be stored, or None."""
    return None if name is None else _unstorable("job name", name, MAX_NAME_CHARS)


def storable_source(source: str | None) -> str | None:
    """A job's source (a file name, which may be any bytes) as its column holds it;
    one that had to change no longer names the file, and `docqueue resume` says so."""
    return None if source is None else storable(source)[:MAX_SOURCE_CHARS]


def storable_label(label: str | None) -> str | None:
    """A model's label (a directory's path, which may be any bytes) as its column
    holds it."""
    return None if label is None else storable(label)[:MAX_LABEL_CHARS]


def _unstorable(what: str, value: str, limit: int) -> str | None:
    if where := _surrogate_in(value):
        problem = f"is not valid Unicode ({where})"
    elif "\x00" in value:
        problem = "contains NUL (\\x00) characters"
    elif len(value) > limit:
        problem = f"is {len(value)} characters, more than {limit}"
    else:
        return None
    shown = repr(value) if len(value) <= 40 else repr(value[:40] + "...")
    return f"{what} {shown} {problem}"


def check(record: Record, *, task: str, max_chars: int) -> Checked:
    """Decide whether a record can be queued; cut over-long text (flagged truncated)."""
    bad_id = id_problem(record.id)
    if bad_id:
        record = Record(record.text, None, record.error or bad_id)
    if record.error:
        return _rejected(record, record.error)
    text = record.text
    if isinstance(text, list):
        return _check_chat(record, task, max_chars)
    if isinstance(text, Mapping):
        return _check_fields(record, task, max_chars)
    if not isinstance(text, str):
        if text is None:
            return _rejected(record, "no text (null)")
        return _rejected(record, f"text is {json_type(text)}, not a string")
    problem = document_problem(text, task)
    if problem:
        return _rejected(record, problem)
    if where := lone_surrogate(text):
        return _rejected(record, f"document is not valid Unicode ({where})")
    truncated = len(text) > max_chars
    if truncated:
        text = text[:max_chars]
    return Checked(record.id, text, text, False, truncated, None)


def _check_chat(record: Record, task: str, max_chars: int) -> Checked:
    if not takes_chat(task):
        return _rejected(record, f"{task} takes text, not chat messages")
    try:
        messages = [ChatMessage.model_validate(m) for m in record.text]
    except ValidationError as exc:
        return _rejected(record, f"invalid chat messages: {exc.errors()[0]['msg']}")
    problem = document_problem(messages, task)
    if problem:
        return _rejected(record, problem)
    if where := lone_surrogate([m.model_dump() for m in messages]):
        return _rejected(record, f"document is not valid Unicode ({where})")
    if any("\x00" in m.role for m in messages):  # stored with the chat; PostgreSQL refuses
        return _rejected(record, "a chat message's role contains NUL (\\x00) characters")
    size = document_size(messages)
    if size > max_chars:
        return _rejected(record, f"chat has {size} characters, more than {max_chars}")
    stored = json.dumps([m.model_dump() for m in messages], ensure_ascii=False)
    return Checked(record.id, messages, stored, True, False, None)


def _check_fields(record: Record, task: str, max_chars: int) -> Checked:
    """A document of named text fields (a query and a passage), stored as JSON."""
    fields = dict(record.text)
    for name, value in fields.items():
        if not isinstance(name, str) or not isinstance(value, str):
            shown = name if isinstance(name, str) else repr(name)
            return _rejected(record, f"field {shown!r} is {json_type(value)}, not a string")
    if any(_UNSTORABLE.search(name) for name in fields):
        return _rejected(record, "a field's name holds NUL or a lone surrogate")
    problem = document_problem(fields, task)
    if problem:
        return _rejected(record, problem)
    for name, value in fields.items():
        if where := _surrogate_in(value):
            return _rejected(record, f"field {name!r} is not valid Unicode ({where})")
    size = document_size(fields)
    if size > max_chars:
        return _rejected(record, f"fields hold {size} characters, more than {max_chars}")
    stored = json.dumps(fields, ensure_ascii=False)
    return Checked(record.id, fields, stored, True, False, None)


def _rejected(record: Record, error: str) -> Checked:
    stored = record.text if isinstance(record.text, str) else ""
    return Checked(record.id, None, storable(stored), False, False, storable(error))


def storable(text: str) -> str:
    """``text`` as any database stores it: NUL dropped, lone surrogates replaced."""
    return _UNSTORABLE.sub(lambda c: "" if c.group() == "\x00" else "\ufffd", text)
