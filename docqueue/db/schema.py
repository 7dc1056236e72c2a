"""Tables.  SQL is the source of truth: a job's items hold their text, so a lost
queue can be rebuilt from here (``docqueue resume``).

Times are epoch seconds (float): portable across SQLite and PostgreSQL, and fine
enough to measure latency.  Table names carry a ``dq_`` prefix so docqueue can
share a database with an application.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from docqueue.jobspec import MAX_LABEL_CHARS, MAX_NAME_CHARS, MAX_SOURCE_CHARS
from docqueue.protocol import MAX_ID_CHARS

PENDING, DONE, FAILED = "pending", "done", "failed"
#: A document of a cancelled job that was not computed: never an error, never recomputed.
CANCELLED = "cancelled"


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "dq_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    task: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    lane: Mapped[str] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(MAX_SOURCE_CHARS))
    #: Number of documents; None while they are still being enqueued.
    total: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    #: The caller's name for the job (several jobs may share one; the newest wins).
    name: Mapped[str | None] = mapped_column(String(MAX_NAME_CHARS), index=True)
    #: A digest of the input (file and options) that created it, so that a rerun of
    #: the same named input can resume the job instead of starting over.
    input_digest: Mapped[str | None] = mapped_column(String(64))
    #: When the job was cancelled (its pending documents became ``cancelled``).
    cancelled_at: Mapped[float | None] = mapped_column(Float)
    #: The key a caller sent so that a retried request finds this job instead of
    #: creating another (the HTTP API's ``Idempotency-Key``); ``input_digest`` then
    #: holds the digest of the request, to refuse the same key with another one.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), index=True, unique=True)
    #: Where the job's summary is POSTed when it finishes (a host of
    #: ``webhook_hosts``); None: nowhere.
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    #: Workers copy a document's result from an earlier one with the same text, task,
    #: model fingerprint and parameters instead of computing it (:mod:`docqueue.worker.reuse`).
    reuse: Mapped[bool] = mapped_column(Boolean, server_default=false())
    #: The jobs of one multi-task call (the same documents, one job per task) share it.
    group_id: Mapped[str | None] = mapped_column(String(32), index=True)
    #: The model as the person named it, where ``model`` is an internal name (annotate:
    #: ``minilm``, a directory's absolute path, a hub id); None: ``model`` is theirs.
    model_label: Mapped[str | None] = mapped_column(String(MAX_LABEL_CHARS))
    #: While a producer adds the job's documents: until when it holds the job (epoch
    #: seconds; it renews this while it adds).  None once the job is closed, and on
    #: jobs made before revision 0012.  Workers close as failed a job whose lease
    #: lapsed before its documents were all in (:mod:`docqueue.core.lease`).
    lease_until: Mapped[float | None] = mapped_column(Float, index=True)
    #: When and why the job failed as a whole (its producer stopped before all its
    #: documents were in); None while it has not.
    failed_at: Mapped[float | None] = mapped_column(Float)
    failure: Mapped[str | None] = mapped_column(Text)


class Item(Base):
    """One document of a job.  ``seq`` is assigned by the producer (0, 1, 2, ...)."""

    __tablename__ = "dq_items"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("dq_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The caller's own id for the document, if it gave one.
    user_id: Mapped[str | None] = mapped_column(String(MAX_ID_CHARS))
    #: The document (JSON-encoded messages when ``chat``).
    text: Mapped[str] = mapped_column(Text)
    chat: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    #: Times the model failed on this document.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    #: The document was cut: at enqueue (size limit) or to the model's input limit.
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Another document of the same job has the same user id.
    duplicate_id: Mapped[bool] = mapped_column(Boolean, default=False)
    #: :func:`docqueue.protocol.document_digest` of the document, so a worker can
    #: check that a message carries this document (None: written before digests,
    #: or refused at the door).
    digest: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_dq_items_job_status", "job_id", "status"),
        Index("ix_dq_items_job_user", "job_id", "user_id"),
    )


class Result(Base):
    """The outcome of one item: an output, or an error.  One row per item, ever:
    the first success wins, a success may replace an error, never the reverse."""

    __tablename__ = "dq_results"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: Sentence embeddings, float32 little-endian (``embed``).
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    error: Mapped[str | None] = mapped_column(Text)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The worker that produced the row; None when the producer rejected the input.
    worker_id: Mapped[str | None] = mapped_column(String(128))
    batch_size: Mapped[int | None] = mapped_column(Integer)
    enqueued_at: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    #: What a later job may reuse this row by (None on rows written before reuse, and
    #: on rows refused at the door): the task, the fingerprint of the model that
    #: made it (:mod:`docqueue.worker.fingerprint`), a digest of the validated
    #: parameters and the document's digest (``dq_items.digest``).
    task: Mapped[str | None] = mapped_column(String(16))
    fingerprint: Mapped[str | None] = mapped_column(String(128))
    params_digest: Mapped[str | None] = mapped_column(String(64))
    text_hash: Mapped[str | None] = mapped_column(String(64))
    #: Copied from an earlier result instead of computed.
    reused: Mapped[bool] = mapped_column(Boolean, server_default=false())

    __table_args__ = (
        ForeignKeyConstraint(
            ["job_id", "seq"], ["dq_items.job_id", "dq_items.seq"], ondelete="CASCADE"
        ),
        Index("ix_dq_results_reuse", "task", "fingerprint", "params_digest", "text_hash"),
    )


class WorkerBeat(Base):
    """A worker process's heartbeat: what it serves and when it was last alive."""

    __tablename__ = "dq_workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32))
    #: name -> {"tasks": [...], "source": path or hub id}
    models: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    documents: Mapped[int] = mapped_column(Integer, default=0)
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)
    batches: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Rows x longest input of every batch run: what the device actually processed.
    padded_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    peak_host_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_gpu_bytes: Mapped[int | None] = mapped_column(BigInteger)


class Tombstone(Base):
    """A deleted job: workers ack and drop its late messages instead of returning
    them to the queue as the messages of a job they have not heard of yet."""

    __tablename__ = "dq_tombstones"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deleted_at: Mapped[float] = mapped_column(Float)


class StoredFile(Base):
    """A file uploaded through the OpenAI-compatible ``POST /v1/files``: kept in the
    database (in :class:`FileChunk` rows), so every API process behind a load
    balancer sees it."""

    __tablename__ = "dq_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(1024))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)
    #: The Idempotency-Key of the upload that created it, and a digest of that
    #: request (purpose, name, content) to refuse the key for another upload.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), index=True, unique=True)
    digest: Mapped[str | None] = mapped_column(String(64))


class FileChunk(Base):
    """One piece of a stored file, in order (``n`` = 0, 1, 2, ...)."""

    __tablename__ = "dq_file_chunks"

    file_id: Mapped[str] = mapped_column(
        ForeignKey("dq_files.id", ondelete="CASCADE"), primary_key=True
    )
    n: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Batch(Base):
    """An OpenAI-compatible batch: the docqueue job that runs its lines, and what
    the OpenAI batch object says besides the job's own state."""

    __tablename__ = "dq_batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: None for a batch that failed before it had a job (no line could run).
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("dq_jobs.id", ondelete="CASCADE"), unique=True, index=True
    )
    input_file_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    #: The caller's metadata (up to 16 string pairs).
    batch_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    #: How the response bodies are shaped (e.g. the embeddings' encoding_format).
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The first lines that could not be read, as OpenAI's batch errors.
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    expires_at: Mapped[float] = mapped_column(Float)
    expired_at: Mapped[float | None] = mapped_column(Float)


class ScheduleRun(Base):
    """One run of a schedule: what it took, which jobs it made, how it ended."""

    __tablename__ = "dq_schedule_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule: Mapped[str] = mapped_column(String(100), index=True)
    #: running, succeeded, failed, skipped (the previous run was still going) or
    #: abandoned (its beat stopped; the next run finished its work).
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    #: The jobs the run made (one per task), named before they are created so that a
    #: run cut short can be finished by the next.
    job_ids: Mapped[list[str]] = mapped_column(JSON)
    #: Where the source stands once this run's documents are written back: a
    #: table's watermark and key, or a directory's files as read.
    mark_to: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    documents: Mapped[int] = mapped_column(Integer, default=0)
    reused: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text)


class ScheduleMark(Base):
    """Where a schedule's source stands, and the run that holds it now."""

    __tablename__ = "dq_schedule_marks"

    schedule: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: A table source's last (watermark, key) written back; None before the first.
    mark: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: The run under way (None when none is), and when it last said it is alive.
    running_run: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[float | None] = mapped_column(Float)


class ScheduleFile(Base):
    """A file a directory schedule has annotated, as it was then."""

    __tablename__ = "dq_schedule_files"

    schedule: Mapped[str] = mapped_column(String(100), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))


class BeatLease(Base):
    """The one beat allowed to run schedules: others wait for its lease to lapse."""

    __tablename__ = "dq_beat_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Float)


class WebhookDelivery(Base):
    """The POST of a finished job's summary to its callback URL.  Written in the
    transaction that finishes the job (one per job: ``job_id`` is unique), sent and
    retried by senders that claim it by setting ``lease_until``."""

    __tablename__ = "dq_webhooks"

    #: The delivery id the receiver sees (X-Docqueue-Delivery, and in the body).
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: Not a foreign key: rows go with their job in ``delete_job`` (explicitly, like
    #: results), and deliveries done with are forgotten by ``prune``.
    job_id: Mapped[str] = mapped_column(String(32), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    #: The exact bytes sent and signed, every attempt the same.
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: When the next attempt is due; None once delivered or given up.
    next_at: Mapped[float | None] = mapped_column(Float, index=True)
    #: Until when the sender that claimed it holds it (None: nobody).
    lease_until: Mapped[float | None] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float)
    #: When it was given up after ``webhook_max_attempts``.
    failed_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
