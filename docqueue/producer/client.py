"""The producer API: what a web backend, a scheduled pipeline or the CLI calls.

The :class:`Client` is the application core's front door (:mod:`docqueue.core`):
each method is one call into the core, which does the work and alone opens the
ledger's transactions.  Every document is written to SQL first (the ledger), then
published to Redis.  Waiting reads SQL; a worker's pub/sub notice only wakes the
waiter early.

    client = Client()                         # DOCQUEUE_REDIS_URL, DOCQUEUE_DATABASE_URL
    handle = client.submit("The site is down again", task="classify", model="support")
    handle.result(timeout=5)                  # {"label": ..., "score": ..., "scores": {...}}

    job = client.submit_many(records, task="summarize", model="bart")
    job.wait()
    for row in job.results(): ...

    uploaded = client.files.create(open("requests.jsonl", "rb"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings")
    client.batches.retrieve(batch.id).status  # as the openai SDK's Batch API
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from docqueue import deadletters
from docqueue.config import Settings
from docqueue.core import enqueue, fleet, jobs, submit
from docqueue.core.batches import Batches
from docqueue.core.documents import ResultHandle
from docqueue.core.errors import (
    DocumentCancelled,
    DocumentFailed,
    EnqueueStopped,
    JobFailed,
    KeyReused,
    NoRedis,
    PublishFailed,
    SaveFailed,
    UnknownJob,
    UnsupportedTask,
)
from docqueue.core.files import Files
from docqueue.core.fleet import Coverage, ServedModel, ago
from docqueue.core.groups import JobGroup, TaskSpec
from docqueue.core.jobs import JobHandle, JobStatus, JobSummary, WorkerState
from docqueue.core.overview import Overview
from docqueue.core.publishing import PUBLISH_ERRORS, publish
from docqueue.core.services import Services
from docqueue.core.submit import Submission
from docqueue.deadletters import DeadLetter, DeadLetterCounts
from docqueue.jobspec import JobSpec
from docqueue.protocol import BatchMessage
from docqueue.tasks import load_modules

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis

    from docqueue.core.services import Database


class Client:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
        publish_patience: float = 0.0,
    ) -> None:
        """A client of the Redis and the database the settings name (or
        ``redis_url`` and ``database_url``); the database's tables are made or
        upgraded at once.  Without a Redis URL it works from SQL alone (status,
        results, export), and publishing or waiting raises :class:`NoRedis`.

        ``publish_patience``: seconds publishing keeps trying while Redis does not
        answer (restarted, failing over) before :class:`PublishFailed`.  0 gives up
        after a few quick tries, as a server answering requests should; a batch
        producer (``annotate``, beat's runs) rides through a restart with more."""
        settings = settings or Settings()
        load_modules(settings.task_modules)  # the operator's tasks, by name
        self.services = Services(
            settings,
            redis_url=redis_url,
            database_url=database_url,
            publish_patience=publish_patience,
        )
        self.services.make_current()
        #: OpenAI-style files and batches, as the ``openai`` SDK's ``client.files``
        #: and ``client.batches`` (what the API's /v1/files and /v1/batches call).
        self.files = Files(self.services)
        self.batches = Batches(self.services)

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def db(self) -> Database:
        return self.services.db

    @property
    def redis_url(self) -> str | None:
        return self.services.redis_url

    @property
    def celery(self) -> Celery:
        return self.services.celery

    @property
    def redis(self) -> Redis:
        return self.services.redis

    def close(self) -> None:
        self.services.close()

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
        spec = Submission(text, task, model, params, id, idempotency_key, input_digest).spec()
        return submit.submit(self.services, text, spec.but(callback_url=callback_url), id)

    def submit_each(self, submissions: Sequence[Submission]) -> list[ResultHandle | Exception]:
        """Many :meth:`submit` calls at once, one outcome each, in order: its handle,
        or the exception :meth:`submit` would have raised for it.

        The documents without an idempotency key are written in one transaction and
        published in one Redis round trip (a pipeline) where the transport allows:
        what a server taking many single documents at a time saves.  When that
        transaction fails, each of them is submitted alone, so a document the
        database refuses costs only itself.  Submissions with a key go through
        :meth:`submit` one by one (its check of the key needs its own transaction)."""
        return submit.submit_each(self.services, submissions)

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
        model_label: str | None = None,
    ) -> JobHandle:
        """Queue a stream of documents as one job, in chunks, without holding the stream
        in memory (:meth:`enqueue` with these fields as a :class:`JobSpec`).  Pauses
        while the model's queue is full (back-pressure).  ``model_label`` is the model
        as a person named it, shown instead of ``model`` where that is an internal
        name (annotate's ``m-<digest>``).

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
        spec = JobSpec(
            task,
            model,
            params or {},
            source=source,
            name=name,
            input_digest=input_digest,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            reuse=reuse,
            group_id=group_id,
            model_label=model_label,
        )
        return self.enqueue(spec, documents, chunk_size=chunk_size, job_id=job_id)

    def enqueue(
        self,
        spec: JobSpec,
        documents: Iterable[Any],
        *,
        chunk_size: int | None = None,
        job_id: str | None = None,
        whole: bool = False,
    ) -> JobHandle:
        """:meth:`submit_many` with the job described by one value.  ``whole``: all
        or nothing, as one request's documents are: a service failing part way, or
        every document refused, takes the job back and raises
        :class:`~docqueue.core.errors.NothingQueued` or
        :class:`~docqueue.core.errors.AllRefused` (``job_id`` is then not taken)."""
        if whole:
            return enqueue.enqueue_whole(self.services, documents, spec, chunk_size=chunk_size)
        return enqueue.submit_many(
            self.services, documents, spec, chunk_size=chunk_size, job_id=job_id
        )

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
        :class:`~docqueue.core.groups.JobGroup` joins their results per document.
        Each chunk is saved and published to every job before the next is read, so
        the stream is read once and never held whole.  ``group_id`` (32 hex digits)
        lets the caller know the group's id before its jobs exist.  Raises what
        :meth:`submit_many` raises."""
        spec = JobSpec("", "", source=source, name=name, reuse=reuse, group_id=group_id)
        return self.enqueue_tasks(tasks, spec, documents, chunk_size=chunk_size)

    def enqueue_tasks(
        self,
        tasks: Sequence[TaskSpec],
        spec: JobSpec,
        documents: Iterable[Any],
        *,
        chunk_size: int | None = None,
    ) -> JobGroup:
        """:meth:`submit_tasks` with what every task's job shares (its source, name,
        reuse and group id) as one value; each task sets the rest."""
        return enqueue.submit_tasks(self.services, documents, tasks, spec, chunk_size=chunk_size)

    def group(self, group_id: str) -> JobGroup:
        """The jobs of a multi-task call; raises :class:`UnknownJob` when there are none."""
        return enqueue.group(self.services, group_id)

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
        return enqueue.resume(self.services, job_id, chunk_size, documents)

    def publish(self, message: BatchMessage, producer: Any = None) -> None:
        """Send one message to the queue of its lane, task and model (the documents
        must already be in SQL); through ``producer`` (a kombu Producer, perhaps in
        a ``batch()``) when given."""
        publish(self.services, message, producer)

    # --- jobs -------------------------------------------------------------------

    def job(self, job_id: str) -> JobHandle:
        """The job with this id; raises :class:`UnknownJob` when there is none."""
        handle = JobHandle(self.services, job_id)
        handle.info()
        return handle

    def jobs(
        self,
        state: str | None = None,
        model: str | None = None,
        name: str | None = None,
        limit: int = 50,
        interactive: bool = False,
    ) -> list[JobSummary]:
        """Jobs, newest first, with their progress: ``state`` is running, finished,
        cancelled or failed (see :data:`~docqueue.db.jobs.JOB_STATES`), ``model`` the
        model name the job was queued for, ``name`` the job's name.  The one-document
        jobs of :meth:`submit` (one per call: a web backend makes many) are listed
        only with ``interactive=True``."""
        return jobs.list_jobs(self.services, state, model, name, limit, interactive)

    def prune(self, older_than_days: float | None = None) -> list[str]:
        """Delete finished, cancelled and failed jobs created more than
        ``older_than_days`` (default: the ``retention_days`` setting) days ago, texts
        and results, each leaving a tombstone; forget tombstones older than that (but
        never younger than the visibility timeout, so a message still out there finds
        its tombstone), and webhook deliveries sent or given up that long ago.
        Running jobs are kept.  Returns the ids deleted."""
        return jobs.prune(self.services, older_than_days)

    # --- the fleet ----------------------------------------------------------------

    def every_worker(self) -> list[WorkerState]:
        """Every worker that ever beat, live or not, newest heartbeat first."""
        return fleet.every_worker_seen(self.services)

    def workers(self, model: str) -> list[WorkerState]:
        """Every worker that ever served ``model``, newest heartbeat first."""
        return fleet.workers(self.services, model)

    def models(self) -> list[ServedModel]:
        """The models live workers serve, by name, with the tasks they do."""
        return fleet.models(self.services)

    def coverage(self, model: str, task: str, *, fresh: bool = True) -> Coverage:
        """Which live workers serve ``model`` and which of them do ``task`` (see
        :func:`docqueue.core.fleet.coverage`)."""
        return fleet.coverage(self.services, model, task, fresh=fresh)

    def overview(self) -> Overview:
        """Messages waiting per queue, the dead letters and the live workers, read
        now: what ``docqueue status``, the API's /metrics and its page show.  Needs
        Redis."""
        return fleet.overview(self.services)

    def documents_waiting(self) -> dict[str, int]:
        """Documents not computed yet, per model, over the whole fleet: queued in
        Redis, held by workers, or still being added (what /metrics exports for an
        autoscaler).  Models with none are left out."""
        return fleet.documents_waiting(self.services)

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


__all__ = [
    "PUBLISH_ERRORS",
    "Client",
    "Coverage",
    "DocumentCancelled",
    "DocumentFailed",
    "EnqueueStopped",
    "JobFailed",
    "JobGroup",
    "JobHandle",
    "JobSpec",
    "JobStatus",
    "JobSummary",
    "KeyReused",
    "NoRedis",
    "PublishFailed",
    "ResultHandle",
    "SaveFailed",
    "ServedModel",
    "Submission",
    "TaskSpec",
    "UnknownJob",
    "UnsupportedTask",
    "ago",
]
