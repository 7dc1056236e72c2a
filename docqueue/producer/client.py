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
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from docqueue.broker import make_celery, redis_client
from docqueue.config import Settings
from docqueue.db import jobs as ledger
from docqueue.db import make_engine, migrate
from docqueue.db.jobs import JobInfo, Progress
from docqueue.db.workers import WorkerState, workers_serving
from docqueue.errors import one_line
from docqueue.params import InvalidParams, validate_params
from docqueue.producer.documents import Checked, InvalidDocument, as_record, check
from docqueue.producer.results import export_row
from docqueue.protocol import (
    TASK_NAME,
    BatchMessage,
    Document,
    done_channel,
    is_model_name,
    queue_name,
)


class DocumentFailed(RuntimeError):
    """The document got an error row instead of a result."""

    def __init__(self, job_id: str, seq: int, error: str) -> None:
        super().__init__(f"document {seq} of job {job_id} failed: {error}")
        self.job_id, self.seq, self.error = job_id, seq, error


class UnknownJob(KeyError):
    """No job with this id in the database."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job {self.job_id}"


class PublishFailed(RuntimeError):
    """Redis refused a message after its documents were saved in SQL: the job can be
    completed with :meth:`Client.resume` (``docqueue resume JOB``) once Redis is back."""

    def __init__(self, job_id: str, saved: int, cause: BaseException) -> None:
        super().__init__(
            f"could not publish to Redis ({one_line(cause)}); {saved} documents are saved in "
            f"SQL as job {job_id}: run `docqueue resume {job_id}` (or Client.resume) once "
            "Redis is reachable"
        )
        self.job_id, self.saved = job_id, saved


@dataclass(frozen=True)
class JobStatus:
    """What ``docqueue status`` shows: the job, its progress, and the live workers
    that serve its model."""

    job: JobInfo
    progress: Progress
    #: Live workers serving the job's model, newest heartbeat first.
    workers: list[WorkerState]
    #: When any worker that ever served the model was last heard of (None: never).
    last_seen: float | None


class Client:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.redis_url = redis_url or self.settings.redis()
        if not self.redis_url:
            raise ValueError("no Redis: set DOCQUEUE_REDIS_URL or pass redis_url")
        self.db = make_engine(database_url or self.settings.database())
        migrate(self.db)
        self.celery = make_celery(self.settings, self.redis_url)
        self.redis = redis_client(self.redis_url)

    def close(self) -> None:
        self.db.dispose()
        self.redis.close()
        self.celery.close()

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
    ) -> ResultHandle:
        """Queue one document on the model's interactive lane; returns at once.

        Raises :class:`InvalidParams` or :class:`InvalidDocument` for input that
        could never run."""
        params = self._validate(task, model, params)
        checked = check(
            as_record((id, text)), task=task, max_chars=self.settings.max_document_chars
        )
        if checked.error:
            raise InvalidDocument(checked.error)
        job_id = uuid.uuid4().hex
        with self.db.begin() as conn:
            ledger.create_job(
                conn, job_id, task=task, model=model, params=params, lane="interactive", total=1
            )
            ledger.add_items(conn, job_id, [_item_row(0, checked)])
        assert checked.doc is not None  # checked.error is None
        self._publish(job_id, task, model, params, "interactive", [(0, checked.doc)])
        return ResultHandle(self, job_id, 0)

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
    ) -> JobHandle:
        """Queue a stream of documents as one job, in chunks, without holding the stream
        in memory.  Pauses while the model's queue is full (back-pressure).

        Documents may be strings, (id, text) pairs, mappings with "text" and "id", or
        :class:`~docqueue.producer.documents.Record`.  Ones that cannot run get error
        rows naming the problem; the rest are queued.  ``job_id`` (32 hex digits) lets
        the caller name the job before it exists."""
        params = self._validate(task, model, params)
        job_id = job_id or uuid.uuid4().hex
        with self.db.begin() as conn:
            ledger.create_job(
                conn, job_id, task=task, model=model, params=params, lane="bulk", source=source
            )
        size = chunk_size or self.settings.chunk_size
        queue = queue_name(task, model, "bulk")
        seq = 0
        stream = iter(documents)
        while chunk := list(itertools.islice(stream, size)):
            checked = [
                check(as_record(doc), task=task, max_chars=self.settings.max_document_chars)
                for doc in chunk
            ]
            rows = [_item_row(seq + i, c) for i, c in enumerate(checked)]
            with self.db.begin() as conn:
                ledger.add_items(conn, job_id, rows)
            wire = [(seq + i, c.doc) for i, c in enumerate(checked) if c.doc is not None]
            if wire:
                self._wait_for_room(queue)
                try:
                    self._publish(job_id, task, model, params, "bulk", wire)
                except Exception as exc:
                    raise PublishFailed(job_id, seq + len(chunk), exc) from exc
            seq += len(chunk)
        with self.db.begin() as conn:
            ledger.close_job(conn, job_id, seq)
        return JobHandle(self, job_id)

    def resume(self, job_id: str, chunk_size: int | None = None) -> int:
        """Re-publish every document SQL says is not done (after Redis lost its queue).

        Returns how many were published.  Safe to repeat: a document that then runs
        twice still has one result row."""
        from docqueue.producer.documents import stored_document

        job = self.job(job_id).info()
        size = chunk_size or self.settings.chunk_size
        queue = queue_name(job.task, job.model, job.lane)
        published, last = 0, -1
        while True:
            with self.db.connect() as conn:
                items = ledger.pending_items(conn, job_id, last, size)
            if not items:
                return published
            self._wait_for_room(queue)
            documents = [(seq, stored_document(text, chat)) for seq, text, chat in items]
            self._publish(job_id, job.task, job.model, job.params, job.lane, documents)
            published += len(items)
            last = items[-1][0]

    def job(self, job_id: str) -> JobHandle:
        return JobHandle(self, job_id)

    # --- internals -----------------------------------------------------------------

    def _validate(self, task: str, model: str, params: dict[str, Any] | None) -> dict[str, Any]:
        if not is_model_name(model):
            raise InvalidParams(
                f"model name {model!r}: use letters, digits, '.', '_' and '-' (workers map "
                "names to paths with --model NAME=PATH)"
            )
        return validate_params(task, params, max_new_tokens_cap=self.settings.max_new_tokens_cap)

    def workers(self, model: str) -> list[WorkerState]:
        """Every worker that ever served ``model``, newest heartbeat first."""
        with self.db.connect() as conn:
            return workers_serving(conn, model)

    def _publish(
        self,
        job_id: str,
        task: str,
        model: str,
        params: dict[str, Any],
        lane: str,
        items: list[tuple[int, Document]],
    ) -> None:
        self.publish(
            BatchMessage.model_validate(
                {
                    "job": job_id,
                    "task": task,
                    "model": model,
                    "params": params,
                    "lane": lane,
                    "items": items,
                    "enqueued_at": time.time(),
                }
            )
        )

    def publish(self, message: BatchMessage) -> None:
        """Send one message to the queue of its lane, task and model (the documents
        must already be in SQL)."""
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
        )

    def _wait_for_room(self, queue: str) -> None:
        """Back-pressure: wait while the queue holds too many messages."""
        delay = 0.01
        while self.redis.llen(queue) >= self.settings.max_queued_messages:
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _item_row(seq: int, checked: Checked) -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": seq,
        "user_id": checked.record_id,
        "text": checked.stored_text,
        "chat": checked.chat,
        "truncated": checked.truncated,
    }
    if checked.error:
        row.update(status="failed", error=checked.error)
    return row


class ResultHandle:
    """One submitted document: read its result now, or wait for it."""

    def __init__(self, client: Client, job_id: str, seq: int) -> None:
        self.client, self.job_id, self.seq = client, job_id, seq

    def __repr__(self) -> str:
        return f"ResultHandle(job_id={self.job_id!r}, seq={self.seq})"

    def read(self) -> dict[str, Any] | None:
        """The exported row (output fields, or ``error``), or None while pending."""
        with self.client.db.connect() as conn:
            found = list(ledger.outcomes(conn, self.job_id, seqs=[self.seq]))
        if not found or found[0].status == "pending":
            return None
        return export_row(found[0])

    def done(self) -> bool:
        return self.read() is not None

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the output; raises TimeoutError, or DocumentFailed with the error."""
        row = self._wait(timeout)
        if row.get("status") == "failed":
            raise DocumentFailed(self.job_id, self.seq, row.get("error") or "unknown error")
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
                    raise TimeoutError(f"no result for {self.job_id}/{self.seq} in {timeout}s")
                pubsub.get_message(timeout=min(left, 1.0))


class JobHandle:
    """A bulk job: progress, waiting, results."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client, self.id = client, job_id

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
        with self.client.db.connect() as conn:
            return ledger.progress(conn, self.id)

    def status(self) -> JobStatus:
        """The job, its progress and the live workers serving its model; raises
        :class:`UnknownJob`."""
        job = self.info()
        progress = self.progress()
        workers = self.client.workers(job.model)
        now = time.time()
        timeout = self.client.settings.heartbeat_timeout
        alive = [w for w in workers if w.alive(now, timeout)]
        return JobStatus(job, progress, alive, workers[0].last_seen if workers else None)

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
                raise TimeoutError(f"job {self.id} not finished after {timeout}s: {current}")
            time.sleep(poll)

    def results(self) -> Iterator[dict[str, Any]]:
        """Every document in input order: its id, seq and output fields or error."""
        with self.client.db.connect() as conn:
            for outcome in ledger.outcomes(conn, self.id):
                yield export_row(outcome)
