"""Results written back to a table the user names: created if missing, one row per
source key, upserted, so a run that is repeated doubles nothing.

Columns: the key (named as the source's key column, or ``key`` for a directory),
then each task's output fields (prefixed with the task's name when a schedule has
several), its ``error``, and ``annotated_at`` (epoch seconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
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

from docqueue.schedules.config import TaskSpec

#: The output fields each task writes back, with their column types.
TASK_COLUMNS: dict[str, list[tuple[str, TypeEngine[Any]]]] = {
    "classify": [("label", String(256)), ("score", Float()), ("scores", JSON())],
    "embed": [("embedding", JSON())],
    "summarize": [("summary_text", Text())],
    "generate": [("generated_text", Text())],
}
#: Rows per upsert statement.
CHUNK = 500


class WriteBackError(ValueError):
    """The table exists but lacks columns the schedule writes."""


def prefixes(tasks: Sequence[TaskSpec]) -> list[str]:
    """Column prefix per task: none for one task, the task's name for several (and
    the model's too when a task appears twice)."""
    if len(tasks) == 1:
        return [""]
    names = [t.task for t in tasks]
    return [
        f"{t.task}_" if names.count(t.task) == 1 else f"{t.task}_{t.model}_".replace("-", "_")
        for t in tasks
    ]


def target_table(
    engine: Engine, name: str, key_column: str, key_sample: Any, tasks: Sequence[TaskSpec]
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


def _unique(engine: Engine, table: str, schema: str | None, column: str) -> bool:
    """Whether ``column`` alone is the table's primary key or unique (what an upsert
    by it needs)."""
    found = inspect(engine)
    keys: list[list[Any]] = [found.get_pk_constraint(table, schema=schema)["constrained_columns"]]
    keys += [u["column_names"] for u in found.get_unique_constraints(table, schema=schema)]
    keys += [
        list(i["column_names"]) for i in found.get_indexes(table, schema=schema) if i["unique"]
    ]
    return [column] in keys


def _columns(key_column: str, key_sample: Any, tasks: Sequence[TaskSpec]) -> list[Column[Any]]:
    key_type: TypeEngine[Any] = BigInteger() if isinstance(key_sample, int) else String(1024)
    columns: list[Column[Any]] = [Column(key_column, key_type, primary_key=True)]
    for prefix, spec in zip(prefixes(tasks), tasks, strict=True):
        for field, kind in TASK_COLUMNS[spec.task]:
            columns.append(Column(prefix + field, kind))
        columns.append(Column(prefix + "error", Text()))
    columns.append(Column("annotated_at", Float()))
    return columns


def row_values(result: dict[str, Any], prefix: str, task: str) -> dict[str, Any]:
    """The columns one task's result fills (its fields, or its error)."""
    values = {prefix + field: result.get(field) for field, _ in TASK_COLUMNS[task]}
    values[prefix + "error"] = result.get("error") if result.get("status") != "done" else None
    return values


def upsert(engine: Engine, target: Table, key_column: str, rows: Iterable[dict[str, Any]]) -> int:
    """Insert or update each row by its key; returns the number of rows written."""
    written = 0
    # By key: two documents with one key (a file's lines sharing an id) are one row,
    # the later one's, written and counted once.
    chunk: dict[Any, dict[str, Any]] = {}
    for row in rows:
        chunk[row[key_column]] = {**row, "annotated_at": time.time()}
        if len(chunk) >= CHUNK:
            written += _upsert(engine, target, key_column, list(chunk.values()))
            chunk = {}
    if chunk:
        written += _upsert(engine, target, key_column, list(chunk.values()))
    return written


def _upsert(engine: Engine, target: Table, key_column: str, rows: list[dict[str, Any]]) -> int:
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
