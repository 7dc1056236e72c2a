"""The write-back's column names: which columns a schedule's tasks fill (each
task's output fields, prefixed with the task's name when a schedule has several,
its ``error``, and ``annotated_at``), and the values one result gives them.

Free of SQL (the table itself is :mod:`.writeback`'s) and of the schedules file's
models, so that the file can refuse a key named like an output column at load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from docqueue.tasks import written_back

#: The columns every task adds besides its fields, and the one every row has.
ERROR_COLUMN = "error"
TIME_COLUMN = "annotated_at"


class Task(Protocol):
    """A task of a schedule, as far as its columns go (a schedules-file ``TaskSpec``)."""

    @property
    def task(self) -> str: ...

    @property
    def model(self) -> str: ...


def prefixes(tasks: Sequence[Task]) -> list[str]:
    """Column prefix per task: none for one task, the task's name for several (and
    the model's too when a task appears twice), a "-" as "_" (``fill_mask_``)."""
    if len(tasks) == 1:
        return [""]
    names = [t.task for t in tasks]
    return [
        (f"{t.task}_" if names.count(t.task) == 1 else f"{t.task}_{t.model}_").replace("-", "_")
        for t in tasks
    ]


def output_columns(tasks: Sequence[Task]) -> list[str]:
    """Every column the write-back fills besides the key: each task's fields and
    error (prefixed as :func:`prefixes` says), then ``annotated_at``."""
    names = [
        prefix + name
        for prefix, spec in zip(prefixes(tasks), tasks, strict=True)
        for name in [*(field for field, _ in written_back(spec.task)), ERROR_COLUMN]
    ]
    return [*names, TIME_COLUMN]


def row_values(result: dict[str, Any], prefix: str, task: str) -> dict[str, Any]:
    """The columns one task's result fills (its fields, or its error)."""
    values = {prefix + field: result.get(field) for field, _ in written_back(task)}
    values[prefix + ERROR_COLUMN] = result.get("error") if result.get("status") != "done" else None
    return values
