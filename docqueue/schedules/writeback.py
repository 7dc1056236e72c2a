"""Results written back to a table the user names: created if missing, one row per
source key, upserted, so a run that is repeated doubles nothing.

Columns: the key (named as the source's key column, or ``key`` for a directory),
then each task's output fields (prefixed with the task's name when a schedule has
several), its ``error``, and ``annotated_at`` (epoch seconds): :mod:`.columns`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    inspect,
)
from sqlalchemy.types import TypeEngine

from docqueue.db import Database
from docqueue.errors import Refused
from docqueue.schedules.columns import ERROR_COLUMN, TIME_COLUMN, Task, prefixes
from docqueue.schedules.columns import output_columns as output_columns
from docqueue.schedules.columns import row_values as row_values
from docqueue.tasks import FieldKind, written_back

#: The SQL type of each kind of written-back field (which fields: each task's
#: declaration, ``OutputField.written_back``).
COLUMN_TYPES: dict[FieldKind, TypeEngine[Any]] = {
    "short_text": String(256),
    "text": Text(),
    "number": Float(),
    "json": JSON(),
}
#: Rows per upsert statement.
CHUNK = 500


class WriteBackError(Refused, ValueError):
    """The table exists but lacks columns the schedule writes."""


def target_table(
    engine: Database, name: str, key_column: str, key_sample: Any, tasks: Sequence[Task]
) -> Table:
    """The write-back table, created when missing; raises :class:`WriteBackError`
    when it exists without a column the schedule writes."""
    schema, _, bare = name.rpartition(".")
    wanted = _columns(key_column, key_sample, tasks)
    if inspect(engine).has_table(bare, schema=schema or None):
        existing = Table(bare, MetaData(), schema=schema or None, autoload_with=engine)
        missing = [c.name for c in wanted if c.name not in existing.c]
        if missing:
            raise WriteBackError(f"table {name} lacks the columns {', '.join(missing)}")
        if not _unique(engine, bare, schema or None, key_column):
            raise WriteBackError(
                f"table {name}: its column {key_column} is neither its primary key nor"
                " unique, so rows cannot be upserted by it"
            )
        return existing
    created = Table(bare, MetaData(), *wanted, schema=schema or None)
    created.create(engine, checkfirst=True)
    return created


def _unique(engine: Database, table: str, schema: str | None, column: str) -> bool:
    """Whether ``column`` alone is the table's primary key or unique (what an upsert
    by it needs)."""
    found = inspect(engine)
    keys: list[list[Any]] = [found.get_pk_constraint(table, schema=schema)["constrained_columns"]]
    keys += [u["column_names"] for u in found.get_unique_constraints(table, schema=schema)]
    keys += [
        list(i["column_names"]) for i in found.get_indexes(table, schema=schema) if i["unique"]
    ]
    return [column] in keys


def _columns(key_column: str, key_sample: Any, tasks: Sequence[Task]) -> list[Column[Any]]:
    key_type: TypeEngine[Any] = BigInteger() if isinstance(key_sample, int) else String(1024)
    columns: list[Column[Any]] = [Column(key_column, key_type, primary_key=True)]
    for prefix, spec in zip(prefixes(tasks), tasks, strict=True):
        for field, kind in written_back(spec.task):
            columns.append(Column(prefix + field, COLUMN_TYPES[kind]))
        columns.append(Column(prefix + ERROR_COLUMN, Text()))
    columns.append(Column(TIME_COLUMN, Float()))
    return columns


def upsert(engine: Database, target: Table, key_column: str, rows: Iterable[dict[str, Any]]) -> int:
    """Insert or update each row by its key; returns the number of rows written."""
    written = 0
    # By key: two documents with one key (a file's lines sharing an id) are one row,
    # the later one's, written and counted once.
    chunk: dict[Any, dict[str, Any]] = {}
    for row in rows:
        chunk[row[key_column]] = {**row, TIME_COLUMN: time.time()}
        if len(chunk) >= CHUNK:
            written += _upsert(engine, target, key_column, list(chunk.values()))
            chunk = {}
    if chunk:
        written += _upsert(engine, target, key_column, list(chunk.values()))
    return written


def _upsert(engine: Database, target: Table, key_column: str, rows: list[dict[str, Any]]) -> int:
    dialect = engine.dialect.name
    with engine.begin() as conn:
        if dialect in ("sqlite", "postgresql"):
            from sqlalchemy.dialects import postgresql, sqlite

            make = sqlite.insert if dialect == "sqlite" else postgresql.insert
            statement = make(target)
            updates = {c: statement.excluded[c] for c in rows[0] if c != key_column}
            conn.execute(
                statement.on_conflict_do_update(index_elements=[key_column], set_=updates), rows
            )
        else:  # any other database: replace the rows in one transaction
            keys = [row[key_column] for row in rows]
            conn.execute(delete(target).where(target.c[key_column].in_(keys)))
            conn.execute(insert(target), rows)
    return len(rows)
