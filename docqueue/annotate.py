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
from collections import Counter
from collections.abc import Callable
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
from docqueue.producer.readers import input_digest, read_documents
from docqueue.producer.results import OutputError, check_output
from docqueue.protocol import done_channel
from docqueue.tasks import TASKS_BY_FAMILY, cannot_do
from docqueue.worker.models import ModelUnavailable, family_of, family_on_disk, locate

if TYPE_CHECKING:  # imported once the worker is starting (1 s on a small CPU)
    from docqueue.producer.client import Client, JobHandle
    from docqueue.producer.client import Progress as JobProgress
    from docqueue.producer.groups import JobGroup

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
    #: What became of the job's webhook delivery (None: the job had no callback).
    webhook: str | None = None


def model_name_for(source: str) -> str:
    """A queue-safe name for a model path or hub id, the same for the same source."""
    digest = hashlib.sha1(
        os.path.abspath(source).encode() if os.path.isdir(source) else source.encode()
    ).hexdigest()[:10]
    return f"m-{digest}"


@dataclass(frozen=True)
class TaskRun:
    """One task of an annotate run: the task, the model (directory or hub id), its
    parameters."""

    task: str
    source: str
    params: dict[str, Any]


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
    callback_url: str | None = None,
    reuse: bool = True,
) -> Summary:
    """One task over a file (:func:`annotate_tasks` with one task)."""
    return annotate_tasks(
        path,
        [TaskRun(task, source, params)],
        out=out,
        settings=settings,
        text_field=text_field,
        id_field=id_field,
        device=device,
        job_name=job_name,
        reuse=reuse,
        callback_url=callback_url,
    )


def annotate_tasks(
    path: Path,
    runs: list[TaskRun],
    *,
    out: Path,
    settings: Settings,
    text_field: str = "text",
    id_field: str | None = "id",
    device: str | None = None,
    job_name: str | None = None,
    reuse: bool = True,
    callback_url: str | None = None,
) -> Summary:
    """Annotate a file with one task (one job, one result row per document) or
    several (one job per task, on its own queue, the results joined per document:
    :mod:`docqueue.producer.groups`).

    ``job_name``: a rerun with the same name and the same input (file content,
    fields, task, model, parameters) resumes the earlier job instead of starting
    over; the same name with another input starts a new job (one task only).
    ``reuse``: documents whose text, task, model and parameters already have a
    result in the ledger get a copy of it instead of being computed.
    ``callback_url``: the job's summary is POSTed there when it finishes (one task)."""
    started = time.monotonic()
    if len(runs) > 1 and job_name:
        raise AnnotateError(
            "--name resumes the job of one task; with several --task, run without --name",
            ExitCode.USAGE,
        )
    names = {run.source: model_name_for(run.source) for run in runs}
    if len(runs) > 1:
        from docqueue.producer.groups import TaskSpec, repeated_task

        if twice := repeated_task([TaskSpec(r.task, names[r.source]) for r in runs]):
            raise AnnotateError(twice, ExitCode.USAGE)
    if len(runs) > 1 and callback_url:
        raise AnnotateError(
            "--callback-url announces the job of one task; with several --task, run without it",
            ExitCode.USAGE,
        )
    # Everything that can be checked here is checked before anything starts.
    if callback_url is not None:
        from docqueue.webhooks import check_callback_url

        check_callback_url(callback_url, settings)
    documents = read_documents(path, text_field=text_field, id_field=id_field)
    if len(runs) > 1 and out.suffix.lower() not in (".jsonl", ".csv"):
        raise AnnotateError(
            f"{out}: several tasks are joined into .jsonl or .csv; export each task's job "
            "to other formats with `docqueue export JOB`",
            ExitCode.USAGE,
        )
    try:
        check_output(out, runs[0].task)
    except OutputError as exc:
        raise AnnotateError(str(exc), ExitCode.USAGE) from None
    device = device or settings.device
    if device and (problem := device_problem(device)):
        raise AnnotateError(problem, ExitCode.USAGE)
    for run in runs:
        try:  # fail now, not in a worker
            local = locate(names[run.source], run.source, usage="--model /path/to/model")
        except ModelUnavailable as exc:
            raise AnnotateError(str(exc)) from None
        check_task(run.source, run.task, settings, local_only=local)
    fields = (text_field, id_field)
    with (
        tempfile.TemporaryDirectory(prefix="docqueue-annotate-") as tmp,
        Board("connecting to Redis" if settings.redis() else "starting Redis") as board,
        serve_redis(settings, Path(tmp)) as redis_url,
    ):
        # The worker starts first: its imports and model load are most of a small
        # run, and they overlap with everything this process does until the first
        # document is queued (opening the ledger, reading and enqueueing the file).
        devices = pick_devices(device)
        models = "model" if len(names) == 1 else "models"
        board.phase(f"loading {models} {', '.join(names)} on {', '.join(devices)}")
        workers = LocalWorkers(
            settings.model_copy(update={"redis_url": SecretStr(redis_url)}),
            {name: source for source, name in names.items()},
            devices,
            log_dir=Path(tmp),
        )
        client: Client | None = None
        try:
            from docqueue.producer.client import Client

            client = Client(settings, redis_url=redis_url)
            if client.db.url.get_backend_name() == "sqlite":
                client.prune()  # the embedded ledger keeps retention_days, not everything
            watched, start = _jobs(
                client, path, runs, names, documents, job_name, reuse, callback_url, fields
            )
            coverage = client.coverage
            final = _run(
                workers,
                client,
                watched,
                start,
                board,
                ready=lambda: all(coverage(names[r.source], r.task).doing for r in runs),
            )
            # The workers wind down while the results are written.
            workers.request_stop()
            if len(runs) == 1:
                job = client.job(watched.id)
                return _write_job(client, path, job, final, out, board, started, *fields)
            return _write_group(client, client.group(watched.id), final, out, board, started)
        finally:
            workers.stop(settings.shutdown_grace)
            if client is not None:
                client.close()


def _jobs(
    client: Client,
    path: Path,
    runs: list[TaskRun],
    names: dict[str, str],
    documents: Any,
    job_name: str | None,
    reuse: bool,
    callback_url: str | None,
    fields: tuple[str, str | None],
) -> tuple[JobHandle | GroupWatch, Callable[[], object]]:
    """What the progress bar follows (the job, or the group of one job per task) and
    the call that enqueues the documents."""
    if len(runs) == 1:
        run = runs[0]
        return _single(
            client, path, run, names[run.source], documents, job_name, reuse, *fields, callback_url
        )
    from docqueue.producer.groups import TaskSpec

    specs = [TaskSpec(r.task, names[r.source], r.params) for r in runs]
    group_id = uuid.uuid4().hex
    start = partial(
        client.submit_tasks,
        documents,
        specs,
        source=str(path.absolute()),
        reuse=reuse,
        group_id=group_id,
    )
    return GroupWatch(client, group_id, len(specs)), start


def _single(
    client: Client,
    path: Path,
    run: TaskRun,
    name: str,
    documents: Any,
    job_name: str | None,
    reuse: bool,
    text_field: str,
    id_field: str | None,
    callback_url: str | None,
) -> tuple[JobHandle, Callable[[], object]]:
    """The job of a one-task run (an earlier one of the same name resumed), and what
    enqueues it."""
    from docqueue.producer.client import JobHandle

    digest = None
    if job_name:
        digest = input_digest(path, run.task, name, run.params, text_field, id_field)
    job_id = _earlier_job(client, job_name, digest)
    if job_id is not None:
        earlier = client.job(job_id).info()
        if (earlier.callback_url, earlier.reuse) != (callback_url, reuse):
            console.print(
                f"job {job_id} goes on with the callback URL and reuse it was created with "
                f"({earlier.callback_url or 'no callback'}, reuse "
                f"{'on' if earlier.reuse else 'off'}), not this run's",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        return JobHandle(client, job_id), partial(client.resume, job_id, documents=documents)
    job_id = uuid.uuid4().hex
    return JobHandle(client, job_id), partial(
        client.submit_many,
        documents,
        task=run.task,
        model=name,
        params=run.params,
        source=str(path.absolute()),
        job_id=job_id,
        name=job_name,
        input_digest=digest,
        reuse=reuse,
        callback_url=callback_url,
    )


def _write_job(
    client: Client,
    path: Path,
    job: JobHandle,
    final: JobProgress,
    out: Path,
    board: Board,
    started: float,
    text_field: str,
    id_field: str | None,
) -> Summary:
    webhook = _webhook_outcome(client, job.id)
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
    # the input's own fields go beside the annotations
    inputs = read_documents(path, text_field=text_field, id_field=id_field)
    written = _export(
        client,
        [job.id],
        lambda: job.export(out, on_row=keep, inputs=inputs, text_field=text_field),
        out,
    )
    return Summary(job.id, final, time.monotonic() - started, written, errors, webhook)


def _webhook_outcome(client: Client, job_id: str) -> str | None:
    """The job's webhook, attempted here if its workers stopped before they sent
    it (annotate runs nothing after it returns): one line saying what happened."""
    from docqueue.db import webhooks
    from docqueue.webhooks import Sender

    with client.db.connect() as conn:
        state = webhooks.of_job(conn, job_id)
    if state is not None and state.delivered_at is None and state.failed_at is None:
        Sender(client.db, client.settings).run_once()
        with client.db.connect() as conn:
            state = webhooks.of_job(conn, job_id)
    if state is None:
        return None
    if state.delivered_at is not None:
        return f"webhook delivery {state.id} sent"
    return (
        f"webhook delivery {state.id} not sent ({state.last_error}); a worker or "
        f"`docqueue serve` on {redact(client.settings.database())} retries it"
    )


def _write_group(
    client: Client, group: JobGroup, final: JobProgress, out: Path, board: Board, started: float
) -> Summary:
    """Write the joined rows; the summary counts documents (done: every task done)."""
    from docqueue.producer.client import Progress as JobProgress

    errors: list[dict[str, Any]] = []
    states: Counter[str] = Counter()

    def keep(row: dict[str, Any]) -> None:
        states[row["status"]] += 1
        if row["status"] == "failed" and len(errors) < 5:
            failed = [
                f"{label}: {row[label]['error']}"
                for label in group.labels
                if row[label]["status"] == "failed"
            ]
            errors.append({"id": row["id"], "seq": row["seq"], "error": "; ".join(failed)})

    board.phase(f"writing {out}")
    ids = [job.id for job in group.jobs]
    written = _export(client, ids, lambda: group.export(out, on_row=keep), out)
    documents = JobProgress(
        total=written,
        enqueued=written,
        done=states["done"],
        failed=states["failed"],
        cancelled=states["cancelled"],
        reused=final.reused,
    )
    return Summary(group.id, documents, time.monotonic() - started, written, errors)


def _export(client: Client, job_ids: list[str], export: Callable[[], int], out: Path) -> int:
    try:
        return export()
    except (OSError, OutputError) as exc:
        where = redact(client.settings.database())
        if len(job_ids) == 1:
            kept = f"job {job_ids[0]} in {where}: run `docqueue export {job_ids[0]} --out {out}`"
        else:  # a group: one job per task, each exported on its own
            jobs = ", ".join(job_ids)
            kept = f"jobs {jobs} (one per task) in {where}: run `docqueue export JOB` for each"
        raise AnnotateError(
            f"could not write {out} ({one_line(exc)}); the results are kept as {kept}"
        ) from None


class GroupWatch:
    """A multi-task run seen as one job by the progress bar: its counts are the sums
    over its tasks' jobs (documents x tasks)."""

    def __init__(self, client: Client, group_id: str, tasks: int) -> None:
        from docqueue.producer.client import JobHandle
        from docqueue.producer.groups import group_job_ids

        self.id = group_id
        self.jobs = [JobHandle(client, job_id) for job_id in group_job_ids(group_id, tasks)]

    def progress(self) -> JobProgress:
        from docqueue.producer.client import Progress as JobProgress

        each = [job.progress() for job in self.jobs]  # UnknownJob until they are created
        totals = [p.total for p in each]
        return JobProgress(
            total=None if None in totals else sum(t or 0 for t in totals),
            enqueued=sum(p.enqueued for p in each),
            done=sum(p.done for p in each),
            failed=sum(p.failed for p in each),
            cancelled=sum(p.cancelled for p in each),
            reused=sum(p.reused for p in each),
        )


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
    client: Client,
    job: JobHandle | GroupWatch,
    start: Callable[[], object],
    board: Board,
    ready: Callable[[], bool],
) -> JobProgress:
    """Enqueue on a thread (``start``) and show progress until the job finishes.
    ``ready`` says whether a worker is up (the board then says "annotating").
    Workers publish on a job's channel after each commit: the progress is read
    again at once then, and at least every quarter second."""
    jobs = job.jobs if isinstance(job, GroupWatch) else [job]
    with client.redis.pubsub(ignore_subscribe_messages=True) as commits:
        commits.subscribe(*(done_channel(j.id) for j in jobs))
        return _follow(workers, job, start, board, ready, commits)


def _follow(
    workers: LocalWorkers,
    job: JobHandle | GroupWatch,
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
