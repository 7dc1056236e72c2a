"""Several tasks over the same documents in one pass: one job per task, each on its
own queue (so each model's workers take their own), tied together by a group id,
and the results joined per document.

A joined row is ``{"id", "seq", "status", <label>: {that task's fields}, ...}``.
The label of a task is its name (``classify``, ``embed``), or ``task:model`` when
the same task runs with several models.  ``status`` is the document's overall
state: pending while any task is pending, else failed when any task failed, else
cancelled when any was cancelled, else done.  In CSV, each task's fields are
columns named ``label.field``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docqueue.core.jobs import JobHandle
from docqueue.core.services import Services, services_of
from docqueue.db import jobs as ledger
from docqueue.db.jobs import Progress
from docqueue.formats.results import HEAD, check_output, csv_columns, export_row, write_rows

#: A document's overall state, from its tasks' states: the first that any task has.
_PRECEDENCE = ("pending", "failed", "cancelled", "done")


@dataclass(frozen=True)
class TaskSpec:
    """One task of a multi-task call: the task, the model's name, its parameters."""

    task: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    #: The model as the person named it, where ``model`` is an internal name.
    model_label: str | None = None

    @property
    def model_shown(self) -> str:
        return self.model_label or self.model

    def spec_fields(self) -> dict[str, Any]:
        """What the task sets of its job's :class:`~docqueue.jobspec.JobSpec`."""
        return {
            "task": self.task,
            "model": self.model,
            "params": self.params,
            "model_label": self.model_label,
        }


def group_job_ids(group_id: str, n: int) -> list[str]:
    """The ids of a group's ``n`` jobs: the group's prefix and the task's index, so
    that they sort in the order of the tasks (32 characters, like any job id)."""
    return [f"{group_id[:28]}{i:04x}" for i in range(n)]


def repeated_task(specs: Sequence[TaskSpec]) -> str | None:
    """Why ``specs`` cannot be joined: a (task, model) pair named twice (their columns
    would be one), or None."""
    pairs = [(s.task, s.model) for s in specs]
    for spec in specs:
        if pairs.count((spec.task, spec.model)) > 1:
            return (
                f"{spec.task}:{spec.model_shown} is named twice; a group runs each task of a "
                "model once"
            )
    return None


def labels_for(specs: Sequence[TaskSpec]) -> list[str]:
    """Each task's key in a joined row: its name, or ``task:model`` when the task
    appears more than once (the model as the person named it)."""
    counts = {t: sum(1 for s in specs if s.task == t) for t in {s.task for s in specs}}
    return [s.task if counts[s.task] == 1 else f"{s.task}:{s.model_shown}" for s in specs]


def joined(rows: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """One document's rows (one per task, same seq) as one joined row."""
    first = rows[0]
    states = {row["status"] for row in rows}
    status = next((s for s in _PRECEDENCE if s in states), first["status"])
    out: dict[str, Any] = {"id": first["id"], "seq": first["seq"], "status": status}
    for label, row in zip(labels, rows, strict=True):
        out[label] = {k: v for k, v in row.items() if k not in ("id", "seq")}
    return out


def flat(row: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """A joined row with each task's fields as ``label.field`` (for CSV)."""
    out = {k: row[k] for k in HEAD}
    for label in labels:
        for key, value in row[label].items():
            out[f"{label}.{key}"] = value
    return out


class JobGroup:
    """The jobs of one multi-task call: progress, waiting, joined results."""

    def __init__(self, owner: Services | Any, group_id: str, jobs: Sequence[JobHandle]) -> None:
        """``owner``: the :class:`Services` (or a Client, which holds them)."""
        self.services, self.id = services_of(owner), group_id
        self.jobs = list(jobs)
        self.specs = [
            TaskSpec(info.task, info.model, info.params, info.model_label)
            for info in (j.info() for j in jobs)
        ]
        self.labels = labels_for(self.specs)

    def __repr__(self) -> str:
        return f"JobGroup(id={self.id!r}, jobs={[j.id for j in self.jobs]!r})"

    def progress(self) -> dict[str, Progress]:
        """Each task's progress, by label."""
        return {label: job.progress() for label, job in zip(self.labels, self.jobs, strict=True)}

    @property
    def finished(self) -> bool:
        return all(p.finished for p in self.progress().values())

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 0.5,
        on_progress: Callable[[dict[str, Progress]], None] | None = None,
    ) -> dict[str, Progress]:
        """Until every task's job is finished; raises TimeoutError naming those that are not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.progress()
            if on_progress:
                on_progress(current)
            if all(p.finished for p in current.values()):
                return current
            if deadline is not None and time.monotonic() >= deadline:
                waiting = ", ".join(
                    f"{label} ({p.pending} pending)"
                    for label, p in current.items()
                    if not p.finished
                )
                raise TimeoutError(f"job group {self.id} not finished after {timeout}s: {waiting}")
            time.sleep(poll)

    def results(self, after: int = -1) -> Iterator[dict[str, Any]]:
        """Every document in input order, its tasks' results joined (see the module)."""
        with self.services.db.connect() as conn:
            streams = [
                (export_row(o) for o in ledger.outcomes(conn, job.id, after=after))
                for job in self.jobs
            ]
            for rows in zip(*streams, strict=True):
                yield joined(rows, self.labels)

    def results_page(self, after: int = -1, limit: int = 100) -> list[dict[str, Any]]:
        return list(itertools.islice(self.results(after), limit))

    def csv_columns(self) -> list[str]:
        columns = list(HEAD)
        for label, spec in zip(self.labels, self.specs, strict=True):
            own = [c for c in csv_columns(spec.task, spec.params) if c not in ("id", "seq")]
            columns += [f"{label}.{c}" for c in own]
        return columns

    def export(
        self, out: str | Path, on_row: Callable[[dict[str, Any]], None] | None = None
    ) -> int:
        """Write the joined results to ``out`` (.jsonl, or .csv with ``label.field``
        columns); returns how many rows.  ``on_row`` sees each joined row."""
        out = Path(out)
        check_output(out)

        def rows() -> Iterator[dict[str, Any]]:
            for row in self.results():
                if on_row is not None:
                    on_row(row)
                yield flat(row, self.labels) if out.suffix.lower() == ".csv" else row

        return write_rows(rows(), out, self.csv_columns())
