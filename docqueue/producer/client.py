"""The producer API: what a web backend, a scheduled pipeline or the CLI calls.

Every document is written to SQL first (the ledger), then published to Redis.
Waiting reads SQL; a worker's pub/sub notice only wakes the waiter early.

    client = Client()                         # DOCQUEUE_REDIS_URL, DOCQUEUE_DATABASE_URL
    handle = client.submit("The site is down again", task="classify", model="support")
    handle.result(timeout=5)                  # {"label": ..., "score": ..., "scores": {...}}

    job = client.submit_many(records, task="summarize", model="bart")
    job.wait()
    for row in job.results(): ...
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from docqueue import deadletters
from docqueue.config import Settings
from docqueue.db import jobs as ledger
from docqueue.db import make_engine, migrate, webhooks
from docqueue.db.jobs import JOB_STATES, JobInfo, JobSummary, Progress
from docqueue.db.workers import WorkerState, every_worker, workers_serving
from docqueue.deadletters import DeadLetter, DeadLetterCounts
from docqueue.errors import one_line
from docqueue.params import InvalidParams, validate_params
from docqueue.producer.documents import (
    Checked,
    InvalidDocument,
    Record,
    as_record,
    check,
    name_problem,
    storable_source,
)
from docqueue.producer.groups import JobGroup, TaskSpec, group_job_ids, repeated_task
from docqueue.producer.overview import Overview, read_overview
from docqueue.producer.results import check_output, csv_columns, export_row, write_rows
from docqueue.protocol import (
    TASK_NAME,
    BatchMessage,
    Document,
    document_digest,
    document_size,
    done_channel,
    is_model_name,
    queue_name,
)
from docqueue.tasks import cannot_do
from docqueue.webhooks import check_callback_url

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis

A = TypeVar("A")
T = TypeVar("T")


log = logging.getLogger(__name__)


class DocumentFailed(RuntimeError):
    """The document got an error row instead of a result."""

    def __init__(self, job_id: str, seq: int, error: str) -> None:
        super().__init__(f"document {seq} of job {job_id} failed: {error}")
        self.job_id, self.seq, self.error = job_id, seq, error


class DocumentCancelled(RuntimeError):
    """The document's job was cancelled before it was computed."""

    def __init__(self, job_id: str, seq: int) -> None:
        super().__init__(f"document {seq} of job {job_id} was cancelled")
        self.job_id, self.seq = job_id, seq


class UnknownJob(KeyError):
    """No job with this id in the database."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job {self.job_id}"


#: What publishing raises when Redis fails (the broker's errors, and the socket's).
PUBLISH_ERRORS = (RedisError, KombuError, OSError)


class EnqueueStopped(RuntimeError):
    """A service failed part way through adding or publishing a job's documents:
    ``saved`` of them are in SQL, ``published`` of those were published by this
    call.  :meth:`Client.resume` (``docqueue resume JOB``) completes the job once
    the service is back."""

    #: What failed, as the message names it.
    failed = "could not reach the service"
    service = "the service"

    def __init__(self, job_id: str, saved: int, published: int, cause: BaseException) -> None:
        self.job_id, self.saved, self.published = job_id, saved, published
        self.cause = one_line(cause)
        super().__init__(self.explain(f"`docqueue resume {job_id}` (or Client.resume)"))

    def explain(self, command: str) -> str:
        """The message, naming ``command`` as the way to complete the job."""
        return (
            f"{self.failed} ({self.cause}): {self.saved} documents are saved in SQL as job "
            f"{self.job_id}, {self.published} of them published; run {command} once "
            f"{self.service} is reachable, to publish the rest and add the documents not "
            "saved yet"
        )


class PublishFailed(EnqueueStopped):
    """Redis refused a message after its documents were saved in SQL."""

    failed = "could not publish to Redis"
    service = "Redis"


class SaveFailed(EnqueueStopped):
    """The database failed while documents were being added to a job that it holds."""

    failed = "could not save documents in the database"
    service = "the database"


class NoRedis(ValueError):
    """The client was made without a Redis URL and was asked to publish or wait."""

    def __init__(self) -> None:
        super().__init__("no Redis: set DOCQUEUE_REDIS_URL or pass Client(redis_url=...)")


class UnsupportedTask(InvalidParams):
    """Every live worker of the model says it cannot do the task."""


class KeyReused(ValueError):
    """An idempotency key already names a job that another request created."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was used for another request (job {job_id}); "
            "use a new key for a new request"
        )
        self.key, self.job_id = key, job_id


def ago(seconds: float) -> str:
    """``42s``, ``7m``, ``3h``, ``2d``: how long ago, for a person."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@dataclass(frozen=True)
class Coverage:
    """Which live workers serve a model, and which of them do a task."""

    model: str
    task: str
    #: Live workers serving the model that do the task, newest heartbeat first.
    doing: list[WorkerState]
    #: The tasks the model's live workers do (empty: no live worker serves it).
    tasks: list[str]
    #: When any worker that ever served the model was last heard of (None: never).
    last_seen: float | None

    def problem(self, now: float | None = None) -> str | None:
        """None when a live worker does the task; else one line saying why not."""
        if self.doing:
            return None
        if self.tasks:
            return (
                f"no live worker does {self.task} for model {self.model} "
                f"(its live workers do {', '.join(self.tasks)})"
            )
        now = time.time() if now is None else now
        seen = (
            "never seen" if self.last_seen is None else f"last seen {ago(now - self.last_seen)} ago"
        )
        return f"no live worker serves model {self.model} ({seen})"


@dataclass(frozen=True)
class ServedModel:
    """A model that live workers serve: the tasks they do with it, how many of them
    serve it and on which devices."""

    name: str
    tasks: list[str]
    workers: int
    devices: list[str]


@dataclass(frozen=True)
class JobStatus:
    """What ``docqueue status`` shows: the job, its progress, its pace, and the live
    workers that serve its model and task."""

    job: JobInfo
    progress: Progress
    #: Live workers serving the job's model and task, newest heartbeat first.
    workers: list[WorkerState]
    #: When any worker that ever served the model was last heard of (None: never).
    last_seen: float | None
    #: Why no live worker runs the job (None when one does).
    problem: str | None = None
    #: Seconds from the job's creation to now, or to its last result once finished.
    elapsed: float = 0.0
    #: Documents computed per second since the first one started (None: none yet).
    rate: float | None = None
    #: Seconds until the pending documents are done at that rate (None: unknown or
    #: finished).
    eta: float | None = None
    #: Documents workers computed (done, or failed on a worker); the rest of the
    #: failed ones were refused at the door.
    computed: int = 0


class Client:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
    ) -> None:
        self.settings = settings or Settings()
        #: None: a SQL-only client (status, results, export); publishing or waiting
        #: raises :class:`NoRedis`.  Redis is connected on first use.
        self.redis_url = redis_url or self.settings.redis()
        self.db = make_engine(database_url or self.settings.database())
        migrate(self.db)
        self._celery: Celery | None = None
        self._redis: Redis | None = None
        #: model -> (when read, its workers): submit's check reads SQL once a second.
        self._workers: dict[str, tuple[float, list[WorkerState]]] = {}

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            from docqueue.broker import make_celery

            self._celery = make_celery(self.settings, self._need_redis())
        return self._celery

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            from docqueue.broker import redis_client

            self._redis = redis_client(self._need_redis())
        return self._redis

    def _need_redis(self) -> str:
        if not self.redis_url:
            raise NoRedis()
        return self.redis_url

    def close(self) -> None:
        self.db.dispose()
        if self._redis is not None:
            self._redis.close()
        if self._celery is not None:
            self._celery.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- submitting ----------------------------------------------------------------

    def submit(
        self,
        text: Any,
        *,
        task: str,
        model: str,
        params: dict[str, Any] | None = None,
        id: str | None = None,
        idempotency_key: str | None = None,
        input_digest: str | None = None,
        callback_url: str | None = None,
    ) -> ResultHandle:
        """Queue one document on the model's interactive lane; returns at once.

        With an ``idempotency_key`` that an earlier call used, nothing is queued: the
        handle is that call's document (``replayed``), provided ``input_digest`` (a
        digest of the request) is the same, else :class:`KeyReused`.

        With a ``callback_url`` (a host of the ``webhook_hosts`` setting, else
        :class:`~docqueue.webhooks.CallbackRefused`), the job's summary is POSTed
        there when it finishes (see :mod:`docqueue.webhooks`).

        Raises :class:`InvalidParams` or :class:`InvalidDocument` for input that
        could never run, :class:`UnsupportedTask` when the model's live workers all
        say they cannot do ``task``."""
        if callback_url is not None:
            check_callback_url(callback_url, self.settings)
        single = self._prepare(Submission(text, task, model, params, id))

        def create(conn: Connection) -> None:
            ledger.create_job(
                conn,
                single.job.id,
                task=task,
                model=model,
                params=single.job.params,
                lane="interactive",
                total=1,
                input_digest=input_digest,
                idempotency_key=idempotency_key,
                callback_url=callback_url,
            )
            ledger.add_items(conn, single.job.id, [single.job.item])

        earlier = self._create_once(idempotency_key, input_digest, "interactive", create)
        if earlier is not None:
            # The first call may have failed to publish: send it again if still pending
            # (a document that then runs twice still has one row).
            self.resume(earlier.id)
            return ResultHandle(self, earlier.id, 0, replayed=True)
        return self._publish_single(single)

    def submit_each(self, submissions: Sequence[Submission]) -> list[ResultHandle | Exception]:
        """Many :meth:`submit` calls at once, one outcome each, in order: its handle,
        or the exception :meth:`submit` would have raised for it.

        The documents without an idempotency key are written in one transaction and
        published in one Redis round trip (a pipeline) where the transport allows:
        what a server taking many single documents at a time saves.  When that
        transaction fails, each of them is submitted alone, so a document the
        database refuses costs only itself.  Submissions with a key go through
        :meth:`submit` one by one (its check of the key needs its own transaction)."""
        outcomes: list[ResultHandle | Exception] = []
        grouped: dict[int, _Single] = {}
        for index, submission in enumerate(submissions):
            if submission.idempotency_key is not None:
                outcomes.append(_outcome(self._submit_alone, submission))
                continue
            prepared = _outcome(self._prepare, submission)
            if isinstance(prepared, _Single):
                grouped[index] = prepared
                outcomes.append(ResultHandle(self, prepared.job.id, 0))
            else:
                outcomes.append(prepared)
        if not grouped:
            return outcomes
        try:
            with self.db.begin() as conn:
                ledger.create_single_jobs(conn, [single.job for single in grouped.values()])
        except SQLAlchemyError:
            for index, single in grouped.items():
                outcomes[index] = _outcome(self._create_single, single)
            return outcomes
        try:
            with self.celery.producer_or_acquire() as producer, producer.batch():
                for single in grouped.values():
                    self._publish_single_to(single, producer)
        except PUBLISH_ERRORS as exc:
            for index, single in grouped.items():
                outcomes[index] = PublishFailed(single.job.id, 1, 0, exc)
        return outcomes

    def _submit_alone(self, submission: Submission) -> ResultHandle:
        return self.submit(**submission.arguments())

    def _prepare(self, submission: Submission) -> _Single:
        """The job :meth:`submit` writes for ``submission``; raises what it raises for
        input that cannot run."""
        params = self._validate(submission.task, submission.model, submission.params)
        record = as_record((submission.id, submission.text))
        checked = check(record, task=submission.task, max_chars=self.settings.max_document_chars)
        if checked.error or checked.doc is None:
            raise InvalidDocument(checked.error or "no document")
        job = ledger.SingleJob(
            uuid.uuid4().hex, submission.task, submission.model, params, _item_row(0, checked)
        )
        return _Single(job, checked.doc)

    def _create_single(self, single: _Single) -> ResultHandle:
        with self.db.begin() as conn:
            ledger.create_single_jobs(conn, [single.job])
        return self._publish_single(single)

    def _publish_single(self, single: _Single) -> ResultHandle:
        try:
            self._publish_single_to(single, None)
        except PUBLISH_ERRORS as exc:
            raise PublishFailed(single.job.id, 1, 0, exc) from exc
        return ResultHandle(self, single.job.id, 0)

    def _publish_single_to(self, single: _Single, producer: Any) -> None:
        job = single.job
        self._publish(
            job.id, job.task, job.model, job.params, "interactive", [(0, single.doc)], producer
        )

    def submit_many(
        self,
        documents: Iterable[Any],
        *,
        task: str,
        model: str,
        params: dict[str, Any] | None = None,
        source: str | None = None,
        chunk_size: int | None = None,
        job_id: str | None = None,
        name: str | None = None,
        input_digest: str | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        reuse: bool = False,
        group_id: str | None = None,
    ) -> JobHandle:
        """Queue a stream of documents as one job, in chunks, without holding the stream
        in memory.  Pauses while the model's queue is full (back-pressure).

        With ``reuse``, a document whose text, task, model fingerprint and parameters
        already have a successful result gets a copy of it instead of being computed
        (counted in ``progress().reused``); the worker decides, since only it knows
        the fingerprint of its model.  ``group_id`` ties the job to the others of a
        multi-task call (:meth:`submit_tasks`).

        Documents may be strings, (id, text) pairs, mappings with "text" and "id", or
        :class:`~docqueue.producer.documents.Record`.  Ones that cannot run get error
        rows naming the problem; the rest are queued.  ``job_id`` (32 hex digits) lets
        the caller name the job before it exists; ``name`` is the caller's name for
        it (``jobs(name=...)``), ``input_digest`` a digest of the input that
        :meth:`resume` callers can compare (annotate does).  A job cancelled while
        its documents are being added stops taking them.  The handle's ``rejected``
        counts the documents refused at the door.  Raises :class:`UnsupportedTask` when the
        model's live workers all say they cannot do ``task``; :class:`PublishFailed` or
        :class:`SaveFailed` when Redis or the database fails part way (saying how many
        documents are saved: :meth:`resume` completes the job).

        With an ``idempotency_key`` that an earlier call used, nothing is added: the
        handle is that call's job (``replayed``), provided ``input_digest`` is the
        same, else :class:`KeyReused`.

        With a ``callback_url`` the job's summary is POSTed there when it finishes,
        as for :meth:`submit`."""
        params = self._validate(task, model, params, callback_url)
        if problem := name_problem(name):
            raise InvalidParams(problem)
        new_id = job_id or uuid.uuid4().hex

        def create(conn: Connection) -> None:
            if job_id is not None and (taken := ledger.id_taken(conn, job_id)):
                raise InvalidParams(taken)
            ledger.create_job(
                conn,
                new_id,
                task=task,
                model=model,
                params=params,
                lane="bulk",
                source=storable_source(source),
                name=name,
                input_digest=input_digest,
                idempotency_key=idempotency_key,
                callback_url=callback_url,
                reuse=reuse,
                group_id=group_id,
            )

        earlier = self._create_once(idempotency_key, input_digest, "bulk", create)
        if earlier is not None:
            # The first call may have stopped part way: publish what it left pending
            # and add the rest of the same documents.
            if earlier.total is None and earlier.cancelled_at is None:
                self.resume(earlier.id, chunk_size, documents)
            return JobHandle(self, earlier.id, replayed=True)
        handle = JobHandle(self, new_id)
        handle.rejected = self._add(new_id, task, model, params, documents, 0, chunk_size)
        return handle

    def submit_tasks(
        self,
        documents: Iterable[Any],
        tasks: Sequence[TaskSpec],
        *,
        source: str | None = None,
        chunk_size: int | None = None,
        name: str | None = None,
        reuse: bool = False,
        group_id: str | None = None,
    ) -> JobGroup:
        """Several tasks over the same stream of documents, in one pass: one job per
        task (each on its own queue), all named ``name`` and tied by a group id;
        :class:`~docqueue.producer.groups.JobGroup` joins their results per
        document.  Each chunk is saved and published to every job before the next
        is read, so the stream is read once and never held whole.  ``group_id`` (32
        hex digits) lets the caller know the group's id before its jobs exist.
        Raises what :meth:`submit_many` raises."""
        if not tasks:
            raise InvalidParams("no tasks: name at least one")
        if problem := name_problem(name) or repeated_task(tasks):
            raise InvalidParams(problem)
        specs = [
            TaskSpec(t.task, t.model, self._validate(t.task, t.model, t.params)) for t in tasks
        ]
        group_id = group_id or uuid.uuid4().hex
        ids = group_job_ids(group_id, len(specs))
        with self.db.begin() as conn:
            for job_id, spec in zip(ids, specs, strict=True):
                ledger.create_job(
                    conn,
                    job_id,
                    task=spec.task,
                    model=spec.model,
                    params=spec.params,
                    lane="bulk",
                    source=storable_source(source),
                    name=name,
                    reuse=reuse,
                    group_id=group_id,
                )
        size = chunk_size or self.settings.chunk_size
        handles = [JobHandle(self, job_id) for job_id in ids]
        seq, open_jobs = 0, list(zip(handles, specs, strict=True))
        stream = iter(documents)
        while open_jobs and (chunk := list(itertools.islice(stream, size))):
            for handle, spec in list(open_jobs):
                if self._add_chunk(handle, spec, chunk, seq):
                    open_jobs.remove((handle, spec))  # cancelled: it takes no more
            seq += len(chunk)
        with self.db.begin() as conn:
            for job_id in ids:
                ledger.close_job(conn, job_id, seq)
        return JobGroup(self, group_id, handles)

    def _add_chunk(self, job: JobHandle, spec: TaskSpec, chunk: list[Any], seq: int) -> bool:
        """Save and publish one chunk to one job of a group (counting the documents
        refused at the door in ``job.rejected``); True when the job was cancelled."""
        try:
            wire, cancelled = self._save(job.id, spec.task, chunk, seq)
        except SQLAlchemyError as exc:
            raise SaveFailed(job.id, seq, seq, exc) from exc
        job.rejected += len(chunk) - len(wire)
        if wire and not cancelled:
            try:
                self._wait_for_room(queue_name(spec.task, spec.model, "bulk"))
                self._publish(job.id, spec.task, spec.model, spec.params, "bulk", wire)
            except PUBLISH_ERRORS as exc:
                raise PublishFailed(job.id, seq + len(chunk), seq, exc) from exc
        return cancelled

    def group(self, group_id: str) -> JobGroup:
        """The jobs of a multi-task call; raises :class:`UnknownJob` when there are none."""
        with self.db.connect() as conn:
            ids = ledger.group_jobs(conn, group_id)
        if not ids:
            raise UnknownJob(group_id)
        return JobGroup(self, group_id, [JobHandle(self, job_id) for job_id in ids])

    def _add(
        self,
        job_id: str,
        task: str,
        model: str,
        params: dict[str, Any],
        documents: Iterable[Any],
        seq: int,
        chunk_size: int | None,
        published: int = 0,
    ) -> int:
        """Add and publish documents from ``seq`` on, then close the job; returns
        how many were refused at the door.  Raises :class:`SaveFailed` or
        :class:`PublishFailed` (saying what is saved, and how many were published
        counting the ``published`` before) when a service fails."""
        rejected = 0
        size = chunk_size or self.settings.chunk_size
        queue = queue_name(task, model, "bulk")
        stream = iter(documents)
        while chunk := list(itertools.islice(stream, size)):
            try:
                wire, cancelled = self._save(job_id, task, chunk, seq)
            except IntegrityError:
                # These sequence numbers are taken: another producer is adding this
                # job's documents (a retried request racing the first, or a resume
                # beside the original); the rest, and closing the job, are its.
                log.info("job %s: another producer is adding its documents", job_id)
                return rejected
            except SQLAlchemyError as exc:
                raise SaveFailed(job_id, seq, published, exc) from exc
            rejected += len(chunk) - len(wire)
            seq += len(chunk)
            if cancelled:
                break
            if wire:
                try:
                    self._wait_for_room(queue)
                    self._publish(job_id, task, model, params, "bulk", wire)
                except PUBLISH_ERRORS as exc:
                    raise PublishFailed(job_id, seq, published, exc) from exc
                published += len(wire)
        try:
            with self.db.begin() as conn:
                ledger.close_job(conn, job_id, seq)
        except SQLAlchemyError as exc:
            raise SaveFailed(job_id, seq, published, exc) from exc
        return rejected

    def _save(
        self, job_id: str, task: str, chunk: list[Any], seq: int
    ) -> tuple[list[tuple[int, Document]], bool]:
        """Check and store one chunk of documents numbered from ``seq``, in one
        transaction; returns the ones to publish, and whether the job was cancelled."""
        limit = self.settings.max_document_chars
        checked = [
            # a document the caller already checked for this task and limit (the batch
            # API does, to name the line a refusal concerns) is not checked twice
            doc if isinstance(doc, Checked) else check(as_record(doc), task=task, max_chars=limit)
            for doc in chunk
        ]
        rows = [_item_row(seq + i, c) for i, c in enumerate(checked)]
        with self.db.begin() as conn:
            ledger.add_items(conn, job_id, rows)
            cancelled = ledger.cancelled_while_adding(conn, job_id)
        return [(seq + i, c.doc) for i, c in enumerate(checked) if c.doc is not None], cancelled

    def resume(
        self,
        job_id: str,
        chunk_size: int | None = None,
        documents: Iterable[Any] | None = None,
    ) -> int:
        """Re-publish every document SQL says is pending (after Redis lost its queue,
        or its producer stopped); cancelled documents never are.

        A job whose producer stopped before all its documents were in (its
        ``total`` is None) is completed from ``documents``, the same stream again:
        the ones already stored are skipped, the rest added.  Returns how many
        were published.  Safe to repeat: a document that then runs twice still has
        one result row.  Raises :class:`PublishFailed` when Redis refuses, or
        :class:`SaveFailed` when the database fails adding ``documents`` (the job
        stays in SQL: resume again later)."""
        from docqueue.producer.documents import stored_document

        job = self.job(job_id).info()
        self._need_redis()
        size = chunk_size or self.settings.chunk_size
        queue = queue_name(job.task, job.model, job.lane)
        published, last = 0, -1
        while True:
            with self.db.connect() as conn:
                items = ledger.pending_items(conn, job_id, last, size)
            if not items:
                break
            batch = [(seq, stored_document(text, chat)) for seq, text, chat in items]
            try:
                self._wait_for_room(queue)
                self._publish(job_id, job.task, job.model, job.params, job.lane, batch)
            except PUBLISH_ERRORS as exc:
                saved = job.total or self.job(job_id).progress().enqueued
                raise PublishFailed(job_id, saved, published, exc) from exc
            published += len(items)
            last = items[-1][0]
        if job.total is None and documents is not None and job.cancelled_at is None:
            handle = JobHandle(self, job_id)
            stored = handle.progress().enqueued
            rest = itertools.islice(documents, stored, None)
            refused = self._add(
                job_id, job.task, job.model, job.params, rest, stored, chunk_size, published
            )
            published += handle.progress().enqueued - stored - refused
        return published

    def job(self, job_id: str) -> JobHandle:
        """The job with this id; raises :class:`UnknownJob` when there is none."""
        handle = JobHandle(self, job_id)
        handle.info()
        return handle

    # --- managing jobs -------------------------------------------------------------

    def jobs(
        self,
        state: str | None = None,
        model: str | None = None,
        name: str | None = None,
        limit: int = 50,
        interactive: bool = False,
    ) -> list[JobSummary]:
        """Jobs, newest first, with their progress: ``state`` is running, finished or
        cancelled (see :data:`~docqueue.db.jobs.JOB_STATES`), ``model`` the model
        name the job was queued for, ``name`` the job's name.  The one-document jobs
        of :meth:`submit` (one per call: a web backend makes many) are listed only
        with ``interactive=True``."""
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"job state {state!r}: use {', '.join(JOB_STATES)}")
        if limit < 1:
            raise ValueError(f"limit {limit}: use 1 or more")
        lane = None if interactive else "bulk"
        with self.db.connect() as conn:
            return ledger.list_jobs(
                conn, state=state, model=model, name=name, lane=lane, limit=limit
            )

    def prune(self, older_than_days: float | None = None) -> list[str]:
        """Delete finished and cancelled jobs created more than ``older_than_days``
        (default: the ``retention_days`` setting) days ago, texts and results, each
        leaving a tombstone; forget tombstones older than that (but never younger
        than the visibility timeout, so a message still out there finds its
        tombstone), and webhook deliveries sent or given up that long ago.  Running
        jobs are kept.  Returns the ids deleted."""
        days = self.settings.retention_days if older_than_days is None else older_than_days
        if not days > 0:
            raise ValueError(f"older than {days} days: use a number of days above 0")
        if days == float("inf"):
            return []
        now = time.time()
        keep = days * 86400.0
        deleted: list[str] = []
        while True:
            with self.db.connect() as conn:
                ids = ledger.finished_before(conn, now - keep, limit=100)
            for job_id in ids:
                with self.db.begin() as conn:
                    if ledger.delete_job(conn, job_id, now) is not None:
                        deleted.append(job_id)
            if len(ids) < 100:
                break
        with self.db.begin() as conn:
            ledger.forget_tombstones(conn, now - max(keep, self.settings.visibility_timeout))
            webhooks.forget(conn, now - keep)
        return deleted

    def every_worker(self) -> list[WorkerState]:
        """Every worker that ever beat, live or not, newest heartbeat first."""
        with self.db.connect() as conn:
            return every_worker(conn)

    def models(self) -> list[ServedModel]:
        """The models live workers serve, by name, with the tasks they do."""
        now = time.time()
        every = self.every_worker()
        live = [w for w in every if w.alive(now, self.settings.heartbeat_timeout)]
        served = []
        for name in sorted({name for w in live for name in w.models}):
            serving = [w for w in live if name in w.models]
            served.append(
                ServedModel(
                    name,
                    tasks=sorted({t for w in serving for t in w.models[name].get("tasks", [])}),
                    workers=len(serving),
                    devices=sorted({w.device for w in serving}),
                )
            )
        return served

    def overview(self) -> Overview:
        """Messages waiting per queue, the dead letters and the live workers, read
        now: what ``docqueue status``, the API's /metrics and its page show.  Needs
        Redis."""
        return read_overview(self.redis, self.db, self.settings)

    # --- dead letters ----------------------------------------------------------------

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Messages set aside because they could not be run (not JSON, not a
        message, too big, refused by a worker), newest first, without their bodies:
        the reason, the queue each came from and when.  Needs Redis."""
        if limit < 1 or offset < 0:
            raise ValueError(f"limit {limit}, offset {offset}: use a limit of 1 or more")
        return deadletters.listing(self.redis, limit=limit, offset=offset)

    def dead_letter_counts(self) -> DeadLetterCounts:
        """How many dead letters are held, the cap, and how many the cap dropped."""
        return deadletters.counts(self.redis, self.settings.dead_letter_limit)

    def dead_letter(self, entry_id: int) -> DeadLetter | None:
        """One dead letter with its body (the message as it was on the queue; only
        its beginning when it was over ``max_message_bytes``), or None."""
        return deadletters.get(self.redis, entry_id)

    def purge_dead_letters(self, ids: Iterable[int] | None = None) -> int:
        """Remove these dead letters (every one when ``ids`` is None); returns how
        many were removed."""
        return deadletters.purge(self.redis, ids)

    def replay_dead_letters(
        self, ids: Iterable[int] | None = None
    ) -> tuple[list[int], dict[int, str]]:
        """Put dead letters back on the queues they came from (every one when
        ``ids`` is None), oldest first, after whatever refused them was fixed; a
        message still bad comes back as a new dead letter.  Returns the ids
        replayed and, for each other one, why not (unknown, or only partly kept)."""
        return deadletters.replay(self.redis, ids)

    # --- internals -----------------------------------------------------------------

    def _create_once(
        self,
        key: str | None,
        digest: str | None,
        lane: str,
        create: Callable[[Connection], None],
    ) -> JobInfo | None:
        """Run ``create`` in one transaction, unless ``key`` already names a job: then
        return that job (None: created).  A concurrent request with the same key
        loses the race on the key's unique index and gets the winner's job."""
        if key is not None and (earlier := self._keyed(key, digest, lane)) is not None:
            return earlier
        try:
            with self.db.begin() as conn:
                create(conn)
        except IntegrityError:
            if key is None or (earlier := self._keyed(key, digest, lane)) is None:
                raise
            return earlier
        return None

    def _keyed(self, key: str, digest: str | None, lane: str) -> JobInfo | None:
        """The job created with idempotency ``key``, or None; raises
        :class:`KeyReused` when it was created by another request."""
        with self.db.connect() as conn:
            job = ledger.job_with_key(conn, key)
        if job is not None and (job.input_digest != digest or job.lane != lane):
            raise KeyReused(key, job.id)
        return job

    def _validate(
        self,
        task: str,
        model: str,
        params: dict[str, Any] | None,
        callback_url: str | None = None,
    ) -> dict[str, Any]:
        if callback_url is not None:
            check_callback_url(callback_url, self.settings)
        if not is_model_name(model):
            raise InvalidParams(
                f"model name {model!r}: use letters, digits, '.', '_' and '-' (workers map "
                "names to paths with --model NAME=PATH)"
            )
        checked = validate_params(task, params, max_new_tokens_cap=self.settings.max_new_tokens_cap)
        self._need_redis()
        coverage = self.coverage(model, task, fresh=False)
        if not coverage.doing and coverage.tasks:
            raise UnsupportedTask(cannot_do(model, task, coverage.tasks))
        return checked

    def workers(self, model: str) -> list[WorkerState]:
        """Every worker that ever served ``model``, newest heartbeat first."""
        with self.db.connect() as conn:
            return workers_serving(conn, model)

    def coverage(self, model: str, task: str, *, fresh: bool = True) -> Coverage:
        """Which live workers serve ``model`` and which of them do ``task``: what
        :meth:`Coverage.problem` reports when none does (a typo in the model name,
        a model that cannot do the task, workers that are down).  ``fresh=False``
        may reuse what was read in the last second (submit's hot path)."""
        now = time.time()
        cached = self._workers.get(model)
        if fresh or cached is None or now - cached[0] > 1.0:
            cached = self._workers[model] = (now, self.workers(model))
        every = cached[1]
        live = [w for w in every if w.alive(now, self.settings.heartbeat_timeout)]
        doing = [w for w in live if _does(w, model, task)]
        tasks = sorted({t for w in live for t in w.models[model].get("tasks", [])})
        return Coverage(model, task, doing, tasks, every[0].last_seen if every else None)

    def _publish(
        self,
        job_id: str,
        task: str,
        model: str,
        params: dict[str, Any],
        lane: str,
        items: list[tuple[int, Document]],
        producer: Any = None,
    ) -> None:
        # A message stays far below max_message_bytes (a quarter of it at 4 bytes per
        # character, the worst case of JSON and base64), so workers never refuse one.
        for part in _parts_of(items, self.settings.max_message_bytes // 16):
            self.publish(
                BatchMessage.model_validate(
                    {
                        "job": job_id,
                        "task": task,
                        "model": model,
                        "params": params,
                        "lane": lane,
                        "items": part,
                        "enqueued_at": time.time(),
                    }
                ),
                producer,
            )

    def publish(self, message: BatchMessage, producer: Any = None) -> None:
        """Send one message to the queue of its lane, task and model (the documents
        must already be in SQL); through ``producer`` (a kombu Producer, perhaps in
        a ``batch()``) when given."""
        queue = queue_name(message.task, message.model, message.lane)
        self.celery.send_task(
            TASK_NAME,
            args=[message.model_dump(mode="json")],
            # Celery would put a repr of the arguments (document text) in the headers.
            argsrepr=f"<job {message.job}: {len(message.items)} documents>",
            kwargsrepr="{}",
            queue=queue,
            routing_key=queue,
            ignore_result=True,
            producer=producer,
        )

    def _wait_for_room(self, queue: str) -> None:
        """Back-pressure: wait while the queue holds too many messages."""
        delay = 0.01
        while self.redis.llen(queue) >= self.settings.max_queued_messages:
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _parts_of(
    items: list[tuple[int, Document]], max_chars: int
) -> Iterator[list[tuple[int, Document]]]:
    """``items`` in order, cut into parts of at most ``max_chars`` characters (a
    document longer than that alone in its part)."""
    part: list[tuple[int, Document]] = []
    chars = 0
    for item in items:
        size = document_size(item[1])
        if part and chars + size > max_chars:
            yield part
            part, chars = [], 0
        part.append(item)
        chars += size
    if part:
        yield part


@dataclass(frozen=True)
class Submission:
    """The arguments of one :meth:`Client.submit` call, for :meth:`Client.submit_each`."""

    text: Any
    task: str
    model: str
    params: dict[str, Any] | None = None
    id: str | None = None
    idempotency_key: str | None = None
    input_digest: str | None = None

    def arguments(self) -> dict[str, Any]:
        """:meth:`Client.submit`'s keyword arguments (the text included)."""
        return {
            "text": self.text,
            "task": self.task,
            "model": self.model,
            "params": self.params,
            "id": self.id,
            "idempotency_key": self.idempotency_key,
            "input_digest": self.input_digest,
        }


@dataclass(frozen=True)
class _Single:
    """A checked document ready to be written as its own job, and its wire form."""

    job: ledger.SingleJob
    doc: Document


def _outcome(call: Callable[[A], T], argument: A) -> T | Exception:
    """What ``call(argument)`` returns, or the exception it raised: one submission's
    outcome among many, which must not stop the others."""
    try:
        return call(argument)
    except Exception as exc:  # handed back to the caller, who raises it
        return exc


def _does(worker: WorkerState, model: str, task: str) -> bool:
    """Whether the worker's heartbeat says it does ``task`` with ``model`` (a row
    that does not list its tasks is taken at its word for any)."""
    tasks = worker.models[model].get("tasks")
    return tasks is None or task in tasks


def _item_row(seq: int, checked: Checked) -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": seq,
        "user_id": checked.record_id,
        "text": checked.stored_text,
        "chat": checked.chat,
        "truncated": checked.truncated,
        # what workers compare a message's document with (the document as queued)
        "digest": None if checked.doc is None else document_digest(checked.doc),
    }
    if checked.error:
        row.update(status="failed", error=checked.error)
    return row


class ResultHandle:
    """One submitted document: read its result now, or wait for it."""

    def __init__(self, client: Client, job_id: str, seq: int, replayed: bool = False) -> None:
        self.client, self.job_id, self.seq = client, job_id, seq
        #: The document was queued by an earlier call with the same idempotency key.
        self.replayed = replayed

    def __repr__(self) -> str:
        return f"ResultHandle(job_id={self.job_id!r}, seq={self.seq})"

    def read(self) -> dict[str, Any] | None:
        """The exported row (output fields, or ``error``), or None while pending;
        raises :class:`UnknownJob` once its job was deleted."""
        with self.client.db.connect() as conn:
            found = list(ledger.outcomes(conn, self.job_id, seqs=[self.seq]))
        if not found:
            raise UnknownJob(self.job_id)
        if found[0].status == "pending":
            return None
        return export_row(found[0])

    def done(self) -> bool:
        return self.read() is not None

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the output; raises TimeoutError, DocumentFailed with the error, or
        DocumentCancelled."""
        row = self._wait(timeout)
        if row.get("status") == "failed":
            raise DocumentFailed(self.job_id, self.seq, row.get("error") or "unknown error")
        if row.get("status") == "cancelled":
            raise DocumentCancelled(self.job_id, self.seq)
        return row

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """``await handle.wait(timeout)`` from async code (runs in a thread)."""
        return await asyncio.to_thread(self.result, timeout)

    def _wait(self, timeout: float | None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.client.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            pubsub.subscribe(done_channel(self.job_id))
            while True:
                row = self.read()
                if row is not None:
                    return row
                left = 1.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no result for {self.job_id}/{self.seq} in {timeout}s"
                        + JobHandle(self.client, self.job_id).why_waiting()
                    )
                pubsub.get_message(timeout=min(left, 1.0))


class JobHandle:
    """A bulk job: progress, waiting, results."""

    def __init__(self, client: Client, job_id: str, replayed: bool = False) -> None:
        self.client, self.id = client, job_id
        #: Documents refused at the door (error rows written by submit_many).
        self.rejected = 0
        #: The job was created by an earlier call with the same idempotency key.
        self.replayed = replayed

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r})"

    def info(self) -> JobInfo:
        """The job's task, model, parameters and lane; raises :class:`UnknownJob`."""
        with self.client.db.connect() as conn:
            job = ledger.get_job(conn, self.id)
        if job is None:
            raise UnknownJob(self.id)
        return job

    def progress(self) -> Progress:
        """Raises :class:`UnknownJob` (a job deleted, or not created yet)."""
        with self.client.db.connect() as conn:
            current = ledger.progress(conn, self.id)
        if current is None:
            raise UnknownJob(self.id)
        return current

    def cancel(self) -> int:
        """Cancel the job: its documents not yet computed become ``cancelled`` (never
        computed, never an error row; :meth:`Client.resume` skips them), finished
        ones stay, and workers drop its messages.  A finished job is left as it
        is.  Returns how many documents were cancelled; raises :class:`UnknownJob`."""
        with self.client.db.begin() as conn:
            cancelled = ledger.cancel_job(conn, self.id, time.time())
        if cancelled is None:
            raise UnknownJob(self.id)
        return cancelled

    def delete(self) -> int:
        """Delete the job, its documents and results; workers drop its late messages
        (a tombstone stays).  Returns how many documents were deleted; raises
        :class:`UnknownJob`."""
        with self.client.db.begin() as conn:
            deleted = ledger.delete_job(conn, self.id, time.time())
        if deleted is None:
            raise UnknownJob(self.id)
        return deleted

    def status(self) -> JobStatus:
        """The job, its progress, its pace and the live workers serving its model and
        task (what ``docqueue status`` prints); raises :class:`UnknownJob`."""
        job = self.info()
        with self.client.db.connect() as conn:
            progress = ledger.progress(conn, self.id)
            pace = ledger.pace(conn, self.id)
        if progress is None:  # deleted meanwhile
            raise UnknownJob(self.id)
        now = time.time()
        coverage = self.client.coverage(job.model, job.task)
        elapsed, rate, eta = ledger.timing(job.created_at, progress, pace, now)
        return JobStatus(
            job,
            progress,
            coverage.doing,
            coverage.last_seen,
            problem=coverage.problem(now),
            elapsed=elapsed,
            rate=rate,
            eta=eta,
            computed=pace.computed,
        )

    def why_waiting(self) -> str:
        """``"; no live worker serves model X (never seen)"`` when no live worker
        runs this job, else ``""``: what a timeout adds to its message."""
        try:
            job = self.info()
        except UnknownJob:
            return f"; no job {self.id}"
        problem = self.client.coverage(job.model, job.task).problem()
        return f"; {problem}" if problem else ""

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 0.5,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Progress:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.progress()
            if on_progress:
                on_progress(current)
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.id} not finished after {timeout}s: {current.done} done, "
                    f"{current.failed} failed, {current.pending} pending" + self.why_waiting()
                )
            time.sleep(poll)

    def results(self) -> Iterator[dict[str, Any]]:
        """Every document in input order: its id, seq and output fields or error."""
        with self.client.db.connect() as conn:
            for outcome in ledger.outcomes(conn, self.id):
                yield export_row(outcome)

    def results_page(
        self, after: int = -1, limit: int = 100, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` documents in input order from the first whose seq is above
        ``after``, as :meth:`results` gives them (a page: one short read); only those
        with ``status`` (pending, done, failed, cancelled) if given."""
        with self.client.db.connect() as conn:
            outcomes = ledger.outcomes(conn, self.id, batch=limit, after=after, status=status)
            return [export_row(o) for o in itertools.islice(outcomes, limit)]

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        """The ``limit`` documents workers computed last, newest first, as
        :meth:`results` gives them."""
        with self.client.db.connect() as conn:
            return [export_row(o) for o in ledger.recent_outcomes(conn, self.id, limit)]

    def export(
        self,
        out: str | Path,
        on_row: Callable[[dict[str, Any]], None] | None = None,
        inputs: Iterable[Any] | None = None,
        text_field: str = "text",
    ) -> int:
        """Write the results to ``out`` (.jsonl, .csv with the task's columns,
        .parquet, a .hf dataset directory, or .labelstudio.json for classify) and
        return how many rows.  ``inputs``: the job's input again, one row (a
        mapping, or a :class:`~docqueue.producer.documents.Record` with its fields)
        per document in order, whose fields each row then carries.  Checks the job
        and the file before writing anything; the file is replaced only once
        complete.  ``on_row`` sees each row as it is written.  Raises
        :class:`UnknownJob` or :class:`~docqueue.producer.results.OutputError`."""
        out = Path(out)
        job = self.info()
        check_output(out, job.task)
        rows = self.results()
        if on_row is not None:
            rows = _watched(rows, on_row)
        fields = None if inputs is None else (_fields_of(row) for row in inputs)
        return write_rows(
            rows,
            out,
            csv_columns(job.task, job.params),
            task=job.task,
            model=job.model,
            inputs=fields,
            text_field=text_field,
        )


def _fields_of(row: Any) -> Mapping[str, Any] | None:
    return row.fields if isinstance(row, Record) else row


def _watched(
    rows: Iterator[dict[str, Any]], on_row: Callable[[dict[str, Any]], None]
) -> Iterator[dict[str, Any]]:
    for row in rows:
        on_row(row)
        yield row
