"""Reading documents from JSONL and CSV files, one :class:`Record` at a time.

A line that cannot be read (malformed JSON, invalid UTF-8, no text field) becomes a
Record with an ``error`` naming the line, so it gets an error row instead of
vanishing or stopping the run.  A file that cannot give a single document (empty,
or no row has the text field) is refused at once, before anything is queued.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

from docqueue.producer.documents import Record

_UNDECODABLE = re.compile("[\udc80-\udcff]")
#: JSONL rows read ahead to tell a wrong text field from a few rows without it.
SCAN_ROWS = 1000


class InputError(ValueError):
    """The file as a whole cannot be read (missing, unknown format, no such column)."""


def read_documents(
    path: str | Path, *, text_field: str = "text", id_field: str | None = "id"
) -> Iterator[Record]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        _check_jsonl(path, text_field)
        return read_jsonl(path, text_field=text_field, id_field=id_field)
    if suffix in (".csv", ".tsv"):
        _check_csv(path, text_field, tab=suffix == ".tsv")
        return read_csv(path, text_field=text_field, id_field=id_field, tab=suffix == ".tsv")
    raise InputError(f"{path}: unknown format {suffix!r}; use .jsonl or .csv")


def _check_jsonl(path: Path, text_field: str) -> None:
    """Refuse a file with no rows, or whose first :data:`SCAN_ROWS` objects all lack
    the text field (naming the fields they do have)."""
    fields: dict[str, None] = {}
    rows = 0
    with path.open("rb") as lines:
        for raw in lines:
            if not raw.strip():
                continue
            rows += 1
            try:
                obj = json.loads(raw)
            except ValueError:  # malformed or undecodable: that line's own error row
                obj = None
            if isinstance(obj, dict):
                if text_field in obj:
                    return
                fields.update(dict.fromkeys(map(str, obj)))
            if rows >= SCAN_ROWS:
                break
    if rows == 0:
        raise InputError(f"{path}: no documents")
    if fields:
        where = f"the first {rows} rows" if rows >= SCAN_ROWS else "any row"
        raise InputError(
            f"{path}: no field {text_field!r} in {where} (fields: {', '.join(fields)})"
        )


def _check_csv(path: Path, text_field: str, *, tab: bool) -> None:
    with path.open("rb") as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(stream, delimiter="\t" if tab else ",")
        columns = next(reader, [])
        if text_field not in columns:
            raise InputError(
                f"{path}: no column {text_field!r} (columns: {', '.join(columns) or 'none'})"
            )
        if not any(row for row in reader):
            raise InputError(f"{path}: no documents")


def read_jsonl(path: Path, *, text_field: str, id_field: str | None) -> Iterator[Record]:
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            where = f"line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Record(None, None, f"{where}: invalid UTF-8 at byte {exc.start + 1}")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Record(
                    None, None, f"{where}: malformed JSON ({exc.msg} at column {exc.colno})"
                )
                continue
            if not isinstance(obj, dict):
                yield Record(None, None, f"{where}: expected a JSON object")
                continue
            user_id = obj.get(id_field) if id_field else None
            user_id = None if user_id is None else str(user_id)
            if text_field not in obj:
                yield Record(None, user_id, f"{where}: no {text_field!r} field")
                continue
            yield Record(obj[text_field], user_id)


def read_csv(
    path: Path, *, text_field: str, id_field: str | None, tab: bool = False
) -> Iterator[Record]:
    with path.open("rb") as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.DictReader(stream, delimiter="\t" if tab else ",")
        columns = reader.fieldnames or []
        if text_field not in columns:
            raise InputError(
                f"{path}: no column {text_field!r} (columns: {', '.join(columns) or 'none'})"
            )
        for row in reader:
            where = f"row {reader.line_num}"
            user_id = row.get(id_field) if id_field else None
            text = row.get(text_field)
            if text is None:
                yield Record(None, user_id, f"{where}: no {text_field!r} value")
            elif _UNDECODABLE.search(text) or (user_id and _UNDECODABLE.search(user_id)):
                yield Record(None, None, f"{where}: invalid UTF-8")
            else:
                yield Record(text, user_id or None)
