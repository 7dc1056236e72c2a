"""``docqueue annotate``: one command that annotates a file end to end.

It starts what the distributed setup runs separately: Redis (embedded unless
DOCQUEUE_REDIS_URL is set), the SQLite ledger, one worker process per visible GPU or
one on CPU; then enqueues the file, shows progress, writes the results and stops
everything again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from docqueue.config import Settings, redact
from docqueue.errors import ExitCode, one_line
from docqueue.launcher import LocalWorkers, device_problem, pick_devices, serve_redis
from docqueue.producer.documents import Record
from docqueue.producer.readers import input_digest, read_documents
from docqueue.producer.results import OutputError, check_output
from docqueue.protocol import done_channel
from docqueue.tasks import TASKS_BY_FAMILY, cannot_do
from docqueue.worker.models import ModelUnavailable, family_of, family_on_disk, locate

if TYPE_CHECKING:  # imported once the worker is starting (1 s on a small CPU)
    from docqueue.producer.client import Client, JobHandle
    from docqueue.producer.client import Progress as JobProgress

log = logging.getLogger(__name__)
console = Console(stderr=True)


class AnnotateError(RuntimeError):
    """Stops the run with one line of explanation (and an exit code)."""

    def __init__(self, message: str, code: int = ExitCode.SERVICE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Summary:
    job_id: str
    progress: JobProgress
    seconds: float
    written: int
    errors: list[dict[str, Any]]


def model_name_for(source: str) -> str:
    """A queue-safe name for a model path or hub id, the same for the same source."""
    digest = hashlib.sha1(
        os.path.abspath(source).encode() if os.path.isdir(source) else source.encode()
    ).hexdigest()[:10]
    return f"m-{digest}"


def annotate(
    path: Path,
    *,
    task: str,
    source: str,
    params: dict[str, Any],
    out: Path,
    settings: Settings,
    text_field: str = "text",
    id_field: str | None = "id",
    device: str | None = None,
    job_name: str | None = None,
) -> Summary:
    """``job_name``: a rerun with the same name and the same input (file content,
    fields, task, model, parameters) resumes the earlier job instead of starting
    over; the same name with another input starts a new job."""
    started = time.monotonic()
    # Everything that can be checked here is checked before anything starts.
    documents = read_documents(path, text_field=text_field, id_field=id_field)
    try:
        check_output(out)
    except OutputError as exc:
        raise AnnotateError(str(exc), ExitCode.USAGE) from None
    device = device or settings.device
    if device and (problem := device_problem(device)):
        raise AnnotateError(problem, ExitCode.USAGE)
    name = model_name_for(source)
    try:
        local = locate(name, source, usage="--model /path/to/model")  # fail now, not in a worker
    except ModelUnavailable as exc:
        raise AnnotateError(str(exc)) from None
    check_task(source, task, settings, local_only=local)
    ids = (text_field, id_field)
    with (
        tempfile.TemporaryDirectory(prefix="docqueue-annotate-") as tmp,
        Board("connecting to Redis" if settings.redis() else "starting Redis") as board,
        serve_redis(settings, Path(tmp)) as redis_url,
    ):
        # The worker starts first: its imports and model load are most of a small
        # run, and they overlap with everything this process does until the first
        # document is queued (opening the ledger, reading and enqueueing the file).
        devices = pick_devices(device)
        board.phase(f"loading model {source} on {', '.join(devices)}")
        workers = LocalWorkers(
            settings.model_copy(update={"redis_url": SecretStr(redis_url)}),
            {name: source},
            devices,
            log_dir=Path(tmp),
        )
        client = None
        try:
            from docqueue.producer.client import Client, JobHandle

            client = Client(settings, redis_url=redis_url)
            job_id, start = _prepare(client, path, documents, task, name, params, job_name, ids)
            final = _run(
                workers,
                JobHandle(client, job_id),
                start,
                board,
                ready=lambda: bool(client.coverage(name, task).doing),
            )
            # The worker winds down while the results are written.
            workers.request_stop()
            return _finish(client, job_id, final, path, out, board, settings, started)
        finally:
            workers.stop(settings.shutdown_grace)
            if client is not None:
                client.close()


def _prepare(
    client: Client,
    path: Path,
    documents: Iterator[Record],
    task: str,
    name: str,
    params: dict[str, Any],
    job_name: str | None,
    fields: tuple[str, str | None],
) -> tuple[str, Callable[[], object]]:
    """The job to run (a new one, or the earlier one of that name to resume) and
    the call that enqueues its documents."""
    if client.db.url.get_backend_name() == "sqlite":
        client.prune()  # the embedded ledger keeps retention_days, not everything
    digest = None
    if job_name:
        digest = input_digest(path, task, name, params, *fields)
    job_id = _earlier_job(client, job_name, digest)
    if job_id is not None:
        return job_id, partial(client.resume, job_id, documents=documents)
    job_id = uuid.uuid4().hex
    return job_id, partial(
        client.submit_many,
        documents,
        task=task,
        model=name,
        params=params,
        source=str(path.absolute()),
        job_id=job_id,
        name=job_name,
        input_digest=digest,
    )


def _finish(
    client: Client,
    job_id: str,
    final: JobProgress,
    path: Path,
    out: Path,
    board: Board,
    settings: Settings,
    started: float,
) -> Summary:
    """Write the results of the finished job to ``out``."""
    job = client.job(job_id)
    if final.total and final.failed == final.total and job.status().computed == 0:
        first = next(job.results())
        raise AnnotateError(
            f"{path}: all {final.total} documents were refused ({first['error']})",
            ExitCode.USAGE,
        )
    errors: list[dict[str, Any]] = []

    def keep(row: dict[str, Any]) -> None:
        if row["status"] == "failed" and len(errors) < 5:
            errors.append(row)

    board.phase(f"writing {out}")
    try:
        written = job.export(out, on_row=keep)
    except (OSError, OutputError) as exc:
        raise AnnotateError(
            f"could not write {out} ({one_line(exc)}); the results are kept as job "
            f"{job_id} in {redact(settings.database())}: run "
            f"`docqueue export {job_id} --out {out}`"
        ) from None
    return Summary(job_id, final, time.monotonic() - started, written, errors)


def check_task(source: str, task: str, settings: Settings, *, local_only: bool) -> None:
    """Refuse a task the model's family cannot do (a GPT-2 asked to summarize),
    naming the tasks it can do, before anything is started.  A local model's
    config.json usually answers without importing transformers (2 s that would
    compete with the worker's start for the CPU)."""
    family = family_on_disk(source)
    if family is None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(
                source, trust_remote_code=settings.trust_remote_code, local_files_only=local_only
            )
        except (OSError, ValueError) as exc:
            raise AnnotateError(
                f"model {source}: cannot read its config ({one_line(exc)})"
            ) from None
        family = family_of(config)
    tasks = TASKS_BY_FAMILY[family]
    if task not in tasks:
        raise AnnotateError(cannot_do(source, task, tasks), ExitCode.USAGE)


class Board:
    """The progress bar; its description says what the run is waiting for (starting
    Redis, loading the model, annotating).  Each phase is also printed as a line
    when stderr is not a terminal, where no bar is drawn."""

    def __init__(self, first: str) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.bar.add_task("", total=None, rate="")
        self.first = first

    def phase(self, text: str) -> None:
        self.bar.update(self.task, description=escape(text))
        if not console.is_terminal:
            console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> Board:
        self.bar.start()
        self.phase(self.first)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _earlier_job(client: Client, job_name: str | None, digest: str | None) -> str | None:
    """The id of the job named ``job_name`` to resume, or None to start a new one
    (saying why when a job of that name exists)."""
    if not job_name:
        return None
    found = client.jobs(name=job_name, limit=1)
    if not found:
        return None
    job, progress = found[0].job, found[0].progress
    if job.input_digest != digest:
        why = "has another input (file, fields, task, model or parameters)"
    elif progress.state == "cancelled":
        why = "was cancelled"
    else:
        done = f"{progress.done + progress.failed} of {progress.total or progress.enqueued}"
        console.print(
            f"resuming job {job.id} ({job_name}): {done} documents already done",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return job.id
    console.print(
        f"job {job.id} named {job_name} {why}: starting a new job",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return None


def _run(
    workers: LocalWorkers,
    job: JobHandle,
    start: Callable[[], object],
    board: Board,
    ready: Callable[[], bool],
) -> JobProgress:
    """Enqueue on a thread (``start``) and show progress until the job finishes.
    ``ready`` says whether a worker is up (the board then says "annotating").
    The worker publishes on the job's channel after each commit: the progress is
    read again at once then, and at least every quarter second."""
    with job.client.redis.pubsub(ignore_subscribe_messages=True) as commits:
        commits.subscribe(done_channel(job.id))
        return _follow(workers, job, start, board, ready, commits)


def _follow(
    workers: LocalWorkers,
    job: JobHandle,
    start: Callable[[], object],
    board: Board,
    ready: Callable[[], bool],
    commits: Any,
) -> JobProgress:
    from docqueue.producer.client import UnknownJob

    failed: list[BaseException] = []

    def enqueue() -> None:
        try:
            start()
        except BaseException as exc:  # reported by the main thread
            failed.append(exc)

    producer = threading.Thread(target=enqueue, name="docqueue-enqueue", daemon=True)
    producer.start()
    bar, shown = board.bar, board.task
    annotating = False
    # The rate counts from the first poll that saw results, over at least a second.
    first_seen: tuple[float, int] | None = None
    while True:
        if failed:
            raise failed[0]
        try:
            current = job.progress()
        except UnknownJob:
            if not producer.is_alive():
                raise AnnotateError(f"job {job.id} was deleted while it ran") from None
            time.sleep(0.05)  # the producer has not created it yet
            continue
        handled = current.done + current.failed
        total = current.total if current.total is not None else current.enqueued
        if not annotating and (handled or ready()):
            board.phase("annotating")
            annotating = True
        if handled and first_seen is None:
            first_seen = (time.monotonic(), handled)
        rate = ""
        if first_seen is not None and time.monotonic() - first_seen[0] >= 1.0:
            since, baseline = first_seen
            rate = f"{(handled - baseline) / (time.monotonic() - since):,.0f} docs/s"
        bar.update(shown, completed=handled, total=total or None, rate=rate)
        if current.finished:
            return current
        if workers.all_exited():
            raise AnnotateError(f"worker stopped: {workers.failure()}")
        if commits.get_message(timeout=0.25) is not None:
            while commits.get_message(timeout=0) is not None:
                pass  # several commits since: one read covers them
