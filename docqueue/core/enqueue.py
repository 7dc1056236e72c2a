"""Enqueueing many documents as one job (a file, a stream, a batch), or as one job
per task of a multi-task call; and resuming a job whose documents were not all
published.  Every chunk is saved in SQL before it is published; the producer holds
a lease on the job while it adds them (:mod:`.lease`)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from docqueue.core.creating import checked, create_once, item_row
from docqueue.core.errors import (
    AllRefused,
    EnqueueStopped,
    JobFailed,
    NothingQueued,
    PublishFailed,
    SaveFailed,
    UnknownJob,
)
from docqueue.core.groups import JobGroup, TaskSpec, group_job_ids, repeated_task
from docqueue.core.jobs import JobHandle
from docqueue.core.lease import Lease
from docqueue.core.publishing import PUBLISH_ERRORS, publish_items, wait_for_room
from docqueue.core.services import Services
from docqueue.db import Connection, DatabaseError, IntegrityError, leases
from docqueue.db import jobs as ledger
from docqueue.db.jobs import JobInfo
from docqueue.jobspec import JobSpec
from docqueue.params import InvalidParams
from docqueue.producer.documents import (
    Checked,
    as_record,
    check,
    name_problem,
    storable_label,
    storable_source,
)
from docqueue.protocol import Document, queue_name, stored_document

log = logging.getLogger(__name__)


def submit_many(
    services: Services,
    documents: Iterable[Any],
    spec: JobSpec,
    *,
    chunk_size: int | None = None,
    job_id: str | None = None,
) -> JobHandle:
    """Queue a stream of documents as one job (see :meth:`Client.submit_many`);
    ``job_id`` (32 hex digits) names the job before it exists."""
    spec = checked(services, _storable(spec.but(lane="bulk")))
    if problem := name_problem(spec.name):
        raise InvalidParams(problem)
    new_id = job_id or uuid.uuid4().hex

    def create(conn: Connection) -> None:
        if job_id is not None and (taken := ledger.id_taken(conn, job_id)):
            raise InvalidParams(taken)
        ledger.create_job(conn, new_id, spec, lease_until=_lease_end(services))

    earlier = create_once(services, spec, create)
    if earlier is not None:
        # The first call may have stopped part way: publish what it left pending
        # and add the rest of the same documents.
        if earlier.total is None and earlier.cancelled_at is None:
            resume(services, earlier.id, chunk_size, documents)
        return JobHandle(services, earlier.id, replayed=True)
    handle = JobHandle(services, new_id)
    handle.rejected = _add(services, new_id, spec, documents, 0, chunk_size)
    return handle


def enqueue_whole(
    services: Services, documents: Iterable[Any], spec: JobSpec, *, chunk_size: int | None = None
) -> JobHandle:
    """:func:`submit_many` for a job that is all or nothing (what one request
    sends): when a service fails part way, or every document is refused, the job is
    taken back and :class:`NothingQueued` or :class:`AllRefused` raised."""
    job_id = uuid.uuid4().hex
    try:
        handle = submit_many(services, documents, spec, chunk_size=chunk_size, job_id=job_id)
        total = 0 if handle.replayed else handle.progress().total or 0
        if total and handle.rejected >= total:
            first = next(handle.results())
            raise AllRefused(total, first["seq"], first["error"])
    except EnqueueStopped as exc:
        _take_back(services, job_id)
        raise NothingQueued(exc) from None
    except BaseException:
        _take_back(services, job_id)
        raise
    return handle


def _take_back(services: Services, job_id: str) -> None:
    with contextlib.suppress(UnknownJob):  # never created (refused before), or gone
        JobHandle(services, job_id).delete()


def submit_tasks(
    services: Services,
    documents: Iterable[Any],
    tasks: Sequence[TaskSpec],
    spec: JobSpec,
    *,
    chunk_size: int | None = None,
) -> JobGroup:
    """Several tasks over the same stream of documents, in one pass (see
    :meth:`Client.submit_tasks`): one job per task, each made from ``spec`` (its
    source, name, reuse and group id) with the task's own task, model and
    parameters."""
    if not tasks:
        raise InvalidParams("no tasks: name at least one")
    if problem := name_problem(spec.name) or repeated_task(tasks):
        raise InvalidParams(problem)
    base = _storable(spec.but(lane="bulk", group_id=spec.group_id or uuid.uuid4().hex))
    specs = [
        checked(
            services,
            _storable(
                base.but(task=t.task, model=t.model, params=t.params, model_label=t.model_label)
            ),
        )
        for t in tasks
    ]
    group_id = base.group_id
    assert group_id is not None
    ids = group_job_ids(group_id, len(specs))
    with services.db.begin() as conn:
        for job_id, job_spec in zip(ids, specs, strict=True):
            ledger.create_job(conn, job_id, job_spec, lease_until=_lease_end(services))
    size = chunk_size or services.settings.chunk_size
    handles = [JobHandle(services, job_id) for job_id in ids]
    seq, open_jobs = 0, list(zip(handles, specs, strict=True))
    stream = iter(documents)
    with Lease(services.db, ids, services.settings.enqueue_lease):
        while open_jobs and (chunk := list(itertools.islice(stream, size))):
            for handle, job_spec in list(open_jobs):
                if _add_chunk(services, handle, job_spec, chunk, seq):
                    open_jobs.remove((handle, job_spec))  # cancelled: it takes no more
            seq += len(chunk)
        with services.db.begin() as conn:
            for job_id in ids:
                ledger.close_job(conn, job_id, seq)
    return JobGroup(services, group_id, handles)


def group(services: Services, group_id: str) -> JobGroup:
    """The jobs of a multi-task call; raises :class:`UnknownJob` when there are none."""
    with services.db.connect() as conn:
        ids = ledger.group_jobs(conn, group_id)
    if not ids:
        raise UnknownJob(group_id)
    return JobGroup(services, group_id, [JobHandle(services, job_id) for job_id in ids])


def resume(
    services: Services,
    job_id: str,
    chunk_size: int | None = None,
    documents: Iterable[Any] | None = None,
) -> int:
    """Re-publish every document SQL says is pending, and complete a job whose
    producer stopped from ``documents`` (see :meth:`Client.resume`)."""
    job = JobHandle(services, job_id).info()
    services.need_redis()
    spec = spec_of(job)
    size = chunk_size or services.settings.chunk_size
    queue = queue_name(job.task, job.model, job.lane)
    published, last = 0, -1
    while True:
        with services.db.connect() as conn:
            items = ledger.pending_items(conn, job_id, last, size)
        if not items:
            break
        batch = [(seq, stored_document(text, chat)) for seq, text, chat in items]
        try:
            wait_for_room(services, queue)
            publish_items(services, job_id, spec, batch)
        except PUBLISH_ERRORS as exc:
            saved = job.total or JobHandle(services, job_id).progress().enqueued
            raise PublishFailed(job_id, saved, published, exc) from exc
        published += len(items)
        last = items[-1][0]
    if job.total is None and documents is not None and job.cancelled_at is None:
        with services.db.begin() as conn:  # take hold of it again (it may have failed)
            leases.reopen(conn, job_id, _lease_end(services))
        handle = JobHandle(services, job_id)
        stored = handle.progress().enqueued
        rest = itertools.islice(documents, stored, None)
        refused = _add(services, job_id, spec, rest, stored, chunk_size, published)
        published += handle.progress().enqueued - stored - refused
    return published


def spec_of(job: JobInfo) -> JobSpec:
    """What a job stored in the ledger is, as the spec that made it."""
    return JobSpec(
        job.task,
        job.model,
        job.params,
        lane="interactive" if job.lane == "interactive" else "bulk",
        source=job.source,
        name=job.name,
        input_digest=job.input_digest,
        callback_url=job.callback_url,
        reuse=job.reuse,
        group_id=job.group_id,
        model_label=job.model_label,
    )


def _storable(spec: JobSpec) -> JobSpec:
    """The spec with the source and model label as the ledger keeps them."""
    return spec.but(
        source=storable_source(spec.source), model_label=storable_label(spec.model_label)
    )


def _lease_end(services: Services) -> float:
    return time.time() + services.settings.enqueue_lease


def _add_chunk(
    services: Services, job: JobHandle, spec: JobSpec, chunk: list[Any], seq: int
) -> bool:
    """Save and publish one chunk to one job of a group (counting the documents
    refused at the door in ``job.rejected``); True when the job was cancelled."""
    try:
        wire, cancelled = _save(services, job.id, spec.task, chunk, seq)
    except DatabaseError as exc:
        raise SaveFailed(job.id, seq, seq, exc) from exc
    job.rejected += len(chunk) - len(wire)
    if wire and not cancelled:
        try:
            wait_for_room(services, queue_name(spec.task, spec.model, "bulk"))
            publish_items(services, job.id, spec, wire)
        except PUBLISH_ERRORS as exc:
            raise PublishFailed(job.id, seq + len(chunk), seq, exc) from exc
    return cancelled


def _add(
    services: Services,
    job_id: str,
    spec: JobSpec,
    documents: Iterable[Any],
    seq: int,
    chunk_size: int | None,
    published: int = 0,
) -> int:
    """Add and publish documents from ``seq`` on, then close the job; returns how
    many were refused at the door.  Raises :class:`SaveFailed` or
    :class:`PublishFailed` (saying what is saved, and how many were published
    counting the ``published`` before) when a service fails."""
    with Lease(services.db, [job_id], services.settings.enqueue_lease):
        return _add_held(services, job_id, spec, documents, seq, chunk_size, published)


def _add_held(
    services: Services,
    job_id: str,
    spec: JobSpec,
    documents: Iterable[Any],
    seq: int,
    chunk_size: int | None,
    published: int,
) -> int:
    """:func:`_add`, while the producer holds the job."""
    rejected = 0
    size = chunk_size or services.settings.chunk_size
    queue = queue_name(spec.task, spec.model, "bulk")
    stream = iter(documents)
    while chunk := list(itertools.islice(stream, size)):
        try:
            wire, cancelled = _save(services, job_id, spec.task, chunk, seq)
        except IntegrityError:
            # These sequence numbers are taken: another producer is adding this
            # job's documents (a retried request racing the first, or a resume
            # beside the original); the rest, and closing the job, are its.
            log.info("job %s: another producer is adding its documents", job_id)
            return rejected
        except DatabaseError as exc:
            raise SaveFailed(job_id, seq, published, exc) from exc
        rejected += len(chunk) - len(wire)
        seq += len(chunk)
        if cancelled:
            break
        if wire:
            try:
                wait_for_room(services, queue)
                publish_items(services, job_id, spec, wire)
            except PUBLISH_ERRORS as exc:
                raise PublishFailed(job_id, seq, published, exc) from exc
            published += len(wire)
    try:
        with services.db.begin() as conn:
            ledger.close_job(conn, job_id, seq)
    except DatabaseError as exc:
        raise SaveFailed(job_id, seq, published, exc) from exc
    return rejected


def _save(
    services: Services, job_id: str, task: str, chunk: list[Any], seq: int
) -> tuple[list[tuple[int, Document]], bool]:
    """Check and store one chunk of documents numbered from ``seq``, in one
    transaction; returns the ones to publish, and whether the job was cancelled."""
    limit = services.settings.max_document_chars
    found = [
        # a document the caller already checked for this task and limit (the batch
        # API does, to name the line a refusal concerns) is not checked twice
        doc if isinstance(doc, Checked) else check(as_record(doc), task=task, max_chars=limit)
        for doc in chunk
    ]
    rows = [item_row(seq + i, c) for i, c in enumerate(found)]
    with services.db.begin() as conn:
        if (failure := leases.failure_of(conn, job_id)) is not None:
            raise JobFailed(job_id, failure)  # this producer lost its hold on the job
        ledger.add_items(conn, job_id, rows)
        cancelled = ledger.cancelled_while_adding(conn, job_id)
    return [(seq + i, c.doc) for i, c in enumerate(found) if c.doc is not None], cancelled
