"""One run of a schedule: claim it, finish the work of a run whose beat stopped,
read what is new, submit it (a job group: one job per task), wait, write the
results back, and only then move the source's mark.  A run that fails leaves the mark where it was,
so the next run takes the same documents again (and, with reuse, computes only
those without a result).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from docqueue.core.groups import JobGroup, group_job_ids
from docqueue.core.groups import TaskSpec as GroupTask
from docqueue.db import Database
from docqueue.db import schedules as state
from docqueue.db.engine import make_engine
from docqueue.errors import one_line
from docqueue.jobspec import JobSpec
from docqueue.producer.client import Client, UnknownJob
from docqueue.schedules import sources
from docqueue.schedules.columns import prefixes, row_values
from docqueue.schedules.config import DirectorySource, Schedule, TableSource
from docqueue.schedules.writeback import target_table, upsert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    run_id: int
    state: str
    documents: int = 0
    reused: int = 0
    failed: int = 0
    message: str | None = None
    #: The run's number among its schedule's runs (1 for the first).
    number: int = 0


def run_schedule(client: Client, schedule: Schedule, stale_after: float) -> Outcome:
    """Run ``schedule`` now, unless its previous run is still going (then the run is
    recorded as skipped).  Never raises for a failed run: the outcome says why."""
    db = client.db
    run_id = state.start_run(db, schedule.name)
    number = state.run_number(db, schedule.name, run_id)
    claim = state.claim(db, schedule.name, run_id, stale_after)
    if claim is None:
        message = "the previous run is still going"
        log.warning("schedule %s: run %d not started, %s", schedule.name, number, message)
        state.finish(db, schedule.name, run_id, state.SKIPPED, message=message, release=False)
        return Outcome(run_id, state.SKIPPED, message=message, number=number)
    stop_beating = _heartbeat(db, schedule.name, run_id, stale_after / 3)
    try:
        counts = _Counts()
        if claim.abandoned is not None and claim.abandoned.job_ids:
            earlier = state.run_number(db, schedule.name, claim.abandoned.id)
            log.info("schedule %s: finishing run %d first", schedule.name, earlier)
            _finish_abandoned(client, schedule, run_id, claim.abandoned, counts)
        _run_new(client, schedule, run_id, counts)
    except Exception as exc:  # the run fails; the mark stays where it was
        message = one_line(exc)
        log.error("schedule %s: run %d failed: %s", schedule.name, number, message)
        state.finish(db, schedule.name, run_id, state.FAILED, message=message, **counts.fields())
        return Outcome(run_id, state.FAILED, message=message, number=number, **counts.fields())
    finally:
        stop_beating.set()
    state.finish(db, schedule.name, run_id, state.SUCCEEDED, **counts.fields())
    log.info("schedule %s: run %d done, %s", schedule.name, number, counts)
    return Outcome(run_id, state.SUCCEEDED, number=number, **counts.fields())


@dataclass
class _Counts:
    documents: int = 0
    reused: int = 0
    failed: int = 0

    def fields(self) -> dict[str, Any]:
        return {"documents": self.documents, "reused": self.reused, "failed": self.failed}

    def __str__(self) -> str:
        return f"{self.documents} documents ({self.reused} reused, {self.failed} failed)"


def _run_new(client: Client, schedule: Schedule, run_id: int, counts: _Counts) -> None:
    new = _read_new(client.db, schedule)
    if not new.records:
        return
    job_ids = group_job_ids(_new_group_id(), len(schedule.tasks))
    state.plan(client.db, run_id, job_ids, new.mark_to)
    _wait_write(schedule, new, _submit(client, schedule, new, job_ids[0]), counts)
    _advance(client.db, schedule.name, run_id, new.mark_to)


def _new_group_id() -> str:
    """A group id that is its first job's id (:func:`group_job_ids` keeps the first
    28 characters and numbers the jobs from 0000), so that the job ids a run plans
    name its group too."""
    return group_job_ids(uuid.uuid4().hex, 1)[0]


def _advance(db: Database, schedule: str, run_id: int, mark_to: dict[str, Any]) -> None:
    if not state.advance(db, schedule, run_id, mark_to):
        raise LostClaim(
            f"run {state.run_number(db, schedule, run_id)} lost its claim (not heard from for "
            "too long): its results are written back, the run that took over moves the mark"
        )


class LostClaim(RuntimeError):
    """Another run took the schedule over while this one was still going."""


def _finish_abandoned(
    client: Client, schedule: Schedule, run_id: int, abandoned: state.Run, counts: _Counts
) -> None:
    """Finish what a run cut short planned: the same documents, the same jobs (a job
    that exists is resumed: what it computed is kept, what it missed is computed)."""
    if abandoned.mark_to is None:
        return
    if isinstance(schedule.source, TableSource):
        before = state.mark(client.db, schedule.name)
        again = sources.read_table(schedule.source, before, upto=abandoned.mark_to)
    else:
        again = sources.read_files(schedule.source, abandoned.mark_to.get("files") or {})
    again.mark_to = abandoned.mark_to
    if again.records:  # none: the run stopped after moving the mark, its work is done
        _wait_write(schedule, again, _resume(client, schedule, again, abandoned.job_ids), counts)
    _advance(client.db, schedule.name, run_id, abandoned.mark_to)


def _read_new(db: Database, schedule: Schedule) -> sources.NewDocuments:
    if isinstance(schedule.source, TableSource):
        return sources.read_table(schedule.source, state.mark(db, schedule.name))
    assert isinstance(schedule.source, DirectorySource)
    changed = sources.changed_files(schedule.source, state.known_files(db, schedule.name))
    return sources.read_files(schedule.source, changed)


def _submit(
    client: Client, schedule: Schedule, new: sources.NewDocuments, group_id: str
) -> JobGroup:
    """The schedule's tasks over the new documents: one job per task, in one pass."""
    return client.enqueue_tasks(
        [GroupTask(t.task, t.model, t.params) for t in schedule.tasks],
        _job_spec(schedule, group_id),
        iter(new.records),
    )


def _resume(
    client: Client, schedule: Schedule, new: sources.NewDocuments, job_ids: list[str]
) -> JobGroup:
    """The jobs a run cut short planned, each resumed (what it computed is kept, what
    it missed is computed) or, where the run stopped before creating it, created
    with the id it planned."""
    group_id = job_ids[0]  # :func:`_new_group_id` (a run planned before groups: its first job)
    jobs = []
    for task, job_id in zip(schedule.tasks, job_ids, strict=True):
        try:
            client.resume(job_id, documents=iter(new.records))
            jobs.append(client.job(job_id))
        except UnknownJob:
            spec = _job_spec(schedule, group_id).but(
                task=task.task, model=task.model, params=task.params
            )
            jobs.append(client.enqueue(spec, iter(new.records), job_id=job_id))
    return JobGroup(client, group_id, jobs)


def _job_spec(schedule: Schedule, group_id: str) -> JobSpec:
    """What each job of a run shares (each task sets its task, model and params)."""
    first = schedule.tasks[0]
    return JobSpec(
        first.task,
        first.model,
        first.params,
        name=f"schedule:{schedule.name}",
        reuse=schedule.reuse,
        group_id=group_id,
    )


def _wait_write(
    schedule: Schedule, new: sources.NewDocuments, group: JobGroup, counts: _Counts
) -> None:
    for job in group.jobs:
        job.wait(timeout=schedule.timeout)
    counts.documents += _write_back(schedule, new, group)
    for job in group.jobs:
        progress = job.progress()
        counts.failed += progress.failed
        counts.reused += progress.reused


def _write_back(schedule: Schedule, new: sources.NewDocuments, group: JobGroup) -> int:
    url = schedule.into.url or (
        schedule.source.url if isinstance(schedule.source, TableSource) else None
    )
    engine = make_engine(url.get_secret_value()) if url else group.services.db
    key_column = schedule.key_column()
    try:
        target = target_table(engine, schedule.into.table, key_column, new.keys[0], schedule.tasks)
        return upsert(engine, target, key_column, _rows(schedule, new, group, key_column))
    finally:
        if url:
            engine.dispose()


def _rows(
    schedule: Schedule, new: sources.NewDocuments, group: JobGroup, key_column: str
) -> Iterator[dict[str, Any]]:
    """One row per document, each task's columns side by side (the group joins its
    jobs' results per document), named as the write-back names them."""
    columns = list(zip(group.labels, prefixes(schedule.tasks), schedule.tasks, strict=True))
    key_of = {str(key): key for key in new.keys}
    for joined in group.results():
        row: dict[str, Any] = {key_column: _key(joined, key_of, new.keys)}
        for label, prefix, spec in columns:
            row.update(row_values(joined[label], prefix, spec.task))
        yield row


def _key(result: dict[str, Any], key_of: dict[str, Any], keys: list[Any]) -> Any:
    """The source key of a result: by the id the job stored with its document, not
    by its place, which differs when a run being finished reads a source that
    changed since (a row added inside the range the job holds)."""
    stored = result.get("id")
    if stored is None:  # an id the ledger could not keep (the document failed)
        return keys[result["seq"]]
    if stored in key_of:
        return key_of[stored]
    return int(stored) if keys and isinstance(keys[0], int) else stored  # a row gone


def _heartbeat(db: Database, schedule: str, run_id: int, every: float) -> threading.Event:
    """Keep telling SQL the run is alive until the returned event is set."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                if not state.heartbeat(db, schedule, run_id):
                    number = state.run_number(db, schedule, run_id)
                    log.warning("schedule %s: run %d lost its claim", schedule, number)
                    return
            except Exception as exc:  # the database is away: try again next time
                log.warning("schedule %s: heartbeat failed: %s", schedule, one_line(exc))

    threading.Thread(target=beat, name=f"run-{run_id}-heartbeat", daemon=True).start()
    return stop
