"""What is new in a schedule's source, and where the source will stand once that is
written back (a run moves the mark only after its results are in the table).

A table source reads rows after the last (watermark, key) pair, in that order, so
rows sharing a watermark value are taken in key order and none is skipped when a
run stops between two of them.  A directory source reads the files whose size or
content digest changed since a run last wrote them back.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, column, or_, select, table, text
from sqlalchemy.sql import FromClause

from docqueue.db import Database
from docqueue.db.engine import make_engine
from docqueue.formats.readers import InputError, read_documents
from docqueue.producer.documents import Record
from docqueue.schedules.config import DirectorySource, TableSource


@dataclass
class NewDocuments:
    """A run's documents: ``keys[i]`` is the write-back key of ``records[i]``."""

    records: list[Record]
    keys: list[Any]
    #: Where the source stands once these are written back
    #: (see :func:`docqueue.db.schedules.advance`).
    mark_to: dict[str, Any]


# --- a table in the user's database ------------------------------------------------


def read_table(
    source: TableSource, mark: dict[str, Any] | None, upto: dict[str, Any] | None = None
) -> NewDocuments:
    """Rows after ``mark`` (up to and including ``upto`` when given: a run being
    finished reads the same rows again), at most ``source.limit``."""
    engine = make_engine(source.url.get_secret_value())
    try:
        rows = _rows(engine, source, mark, upto)
    finally:
        engine.dispose()
    records = [_record(source, key, values) for key, _, values in rows]
    keys = [key for key, _, _ in rows]
    if not rows:
        return NewDocuments([], [], dict(mark or {}))
    last_key, last_watermark, _ = rows[-1]
    return NewDocuments(
        records, keys, {"watermark": encode(last_watermark), "key": encode(last_key)}
    )


def _rows(
    engine: Database, source: TableSource, mark: dict[str, Any] | None, upto: dict[str, Any] | None
) -> list[tuple[Any, Any, Any]]:
    src = _selectable(source)
    key, watermark = src.c[source.key], src.c[source.watermark]
    documents = [src.c[name] for name in source.columns()]
    query = select(key, watermark, *documents).where(watermark.is_not(None))
    if mark and "watermark" in mark:
        after_w, after_k = decode(mark["watermark"]), decode(mark["key"])
        query = query.where(or_(watermark > after_w, and_(watermark == after_w, key > after_k)))
    if upto is not None:
        upto_w, upto_k = decode(upto["watermark"]), decode(upto["key"])
        query = query.where(or_(watermark < upto_w, and_(watermark == upto_w, key <= upto_k)))
    query = query.order_by(watermark, key).limit(source.limit)
    with engine.connect() as conn:
        return [(row[0], row[1], tuple(row[2:])) for row in conn.execute(query)]


def _selectable(source: TableSource) -> FromClause:
    names = (source.key, source.watermark, *source.columns())
    if source.query is not None:
        query = source.query.strip().rstrip(";")  # a subquery cannot end with one
        return text(query).columns(*(column(n) for n in names)).subquery("src")
    schema, _, name = (source.table or "").rpartition(".")
    return table(name, *(column(n) for n in names), schema=schema or None)


def _record(source: TableSource, key: Any, values: tuple[Any, ...]) -> Record:
    """A row as a document (its text, or its fields); a NULL is an error row naming
    the column."""
    read = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
    columns = source.columns()
    for column_name, value in zip(columns, read, strict=True):
        if value is None:
            return Record(None, str(key), f"{column_name} is NULL")
    if source.fields is None:
        return Record(read[0], str(key))
    return Record(dict(zip(source.fields, read, strict=True)), str(key))


def encode(value: Any) -> Any:
    """A watermark or key as JSON that :func:`decode` turns back into the same type."""
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "datetime" in value:
            return dt.datetime.fromisoformat(value["datetime"])
        if "date" in value:
            return dt.date.fromisoformat(value["date"])
        if "decimal" in value:
            return decimal.Decimal(value["decimal"])
        if "uuid" in value:
            return uuid.UUID(value["uuid"])
    return value


# --- files in a directory ----------------------------------------------------------


def changed_files(
    source: DirectorySource, known: dict[str, tuple[int, str]]
) -> dict[str, tuple[int, str]]:
    """Files matching the pattern that are new or differ from what was annotated:
    path relative to the directory -> (size, sha256)."""
    root = source.directory
    if not root.is_dir():
        raise InputError(f"{root}: no such directory")
    found = {}
    for path in sorted(root.glob(source.pattern)):
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        size = path.stat().st_size
        before = known.get(relative)
        if before is not None and before[0] == size and before[1] == _digest(path):
            continue
        found[relative] = (size, _digest(path))
    return found


def read_files(source: DirectorySource, files: dict[str, Any]) -> NewDocuments:
    """Every document of ``files``; a document's key is ``path:id`` (its line or row
    number when it has no id)."""
    records: list[Record] = []
    keys: list[str] = []
    for relative in files:
        for n, record in enumerate(_read(source, relative), start=1):
            key = f"{relative}:{record.id if record.id is not None else n}"
            records.append(Record(record.text, key, record.error))
            keys.append(key)
    return NewDocuments(records, keys, {"files": dict(files)})


def _read(source: DirectorySource, relative: str) -> Iterator[Record]:
    return read_documents(
        source.directory / relative, text_field=source.text_spec(), id_field=source.id_field
    )


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
