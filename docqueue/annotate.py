"""``docqueue annotate``: one command that annotates a file end to end.

It starts what the distributed setup runs separately: Redis (embedded unless
DOCQUEUE_REDIS_URL is set), the SQLite ledger, one worker process per visible GPU or
one on CPU; then enqueues the file, shows progress, writes the results and stops
everything again.
"""

from __future__ import annotations

import contextlib
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
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from docqueue.config import Settings, redact
from docqueue.errors import DocqueueError, ExitCode, one_line
from docqueue.formats.readers import field_columns, input_digest, read_documents
from docqueue.formats.results import OutputError, check_output
from docqueue.humanize import per_second, plural
from docqueue.interrupts import Interrupts, StopNow, held_documents
from docqueue.jobspec import JobSpec
from docqueue.launcher import LocalWorkers, device_problem, pick_devices, serve_redis
from docqueue.protocol import done_channel
from docqueue.tasks import cannot_do, declared, named_fields_problem, tasks_of
from docqueue.worker.models import ModelUnavailable, family_of, family_on_disk, locate

if TYPE_CHECKING:  # imported once the worker is starting (1 s on a small CPU)
    from docqueue.core.groups import JobGroup
    from docqueue.core.jobs import Progress as JobProgress
    from docqueue.producer.client import Client, JobHandle

log = logging.getLogger(__name__)

#: Seconds annotate's publishing keeps trying while Redis does not answer.
REDIS_PATIENCE = 120.0
console = Console(stderr=True)


class AnnotateError(DocqueueError, RuntimeError):
    """Stops the run with one line of explanation (and an exit code)."""

    def __init__(self, message: str, code: int = ExitCode.SERVICE) -> None:
        super().__init__(message)
        self.code = code


class Stopped(AnnotateError):
    """The run was stopped with Ctrl-C; the message says what is saved and how to go
    on."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.INTERRUPTED)


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


def model_label_for(given: str) -> str:
    """The model as a person reads it, where annotate names it ``m-<digest>``: a
    bundled model by its name (``minilm``), a directory by its absolute path (two
    directories named alike stay apart), a hub id as written."""
    from docqueue.worker.models import BUNDLED, resolve_source

    for name in BUNDLED:
        if given == name or (os.path.isdir(given) and _same_path(given, name, resolve_source)):
            return name
    return os.path.abspath(given) if os.path.isdir(given) else given


def _same_path(given: str, bundled: str, resolve: Callable[[str], str]) -> bool:
    try:
        return os.path.samefile(given, resolve(bundled))
    except (ModelUnavailable, OSError):
        return False


@dataclass(frozen=True)
class TaskRun:
    """One task of an annotate run: the task, the model (directory or hub id), its
    parameters, and the model as the person named it (default: from ``source``)."""

    task: str
    source: str
    params: dict[str, Any]
    label: str | None = None

    @property
    def model_label(self) -> str:
        return self.label or model_label_for(self.source)


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
    :mod:`docqueue.core.groups`).

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
        from docqueue.core.groups import TaskSpec, repeated_task

        specs = [TaskSpec(r.task, names[r.source], model_label=r.model_label) for r in runs]
        if twice := repeated_task(specs):
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
    if (columns := field_columns(text_field)) is not None:
        for run in runs:
            if problem := named_fields_problem(run.task, columns):
                raise AnnotateError(f"--text-field {text_field}: {problem}", ExitCode.USAGE)
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
        check_task(run.source, run.task, settings, local_only=local, params=run.params)
    fields = (text_field, id_field)
    with (
        Interrupts() as interrupts,
        tempfile.TemporaryDirectory(prefix="docqueue-annotate-") as tmp,
        Board("connecting to Redis" if settings.redis() else "starting Redis") as board,
        serve_redis(settings, Path(tmp)) as redis_url,
    ):
        # The worker starts first: its imports and model load are most of a small
        # run, and they overlap with everything this process does until the first
        # document is queued (opening the ledger, reading and enqueueing the file).
        devices = pick_devices(device)
        models = "model" if len(names) == 1 else "models"
        shown = ", ".join(dict.fromkeys(r.model_label for r in runs))
        board.phase(f"loading {models} {shown} on {', '.join(devices)}")
        workers = LocalWorkers(
            settings.model_copy(update={"redis_url": SecretStr(redis_url)}),
            {name: source for source, name in names.items()},
            devices,
            log_dir=Path(tmp),
        )
        interrupts.on_stop_now.append(workers.send_kill)
        client: Client | None = None
        watched: JobHandle | GroupWatch | None = None
        going_on = _going_on(job_name, reuse)
        try:
            from docqueue.producer.client import Client

            # Its documents ride through a Redis restart (a configured Redis).
            client = Client(settings, redis_url=redis_url, publish_patience=REDIS_PATIENCE)
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
                stopping=_Stopping(interrupts, settings.shutdown_grace, going_on),
            )
            # The workers wind down while the results are written.
            workers.request_stop()
            interrupts.phase = "write"
            where = redact(client.settings.database())
            interrupts.on_write = lambda: board.say(
                f"writing {out} goes on; Ctrl-C again stops now (the results stay in {where})"
            )
            check = interrupts.check
            if len(runs) == 1:
                job = client.job(watched.id)
                return _write_job(client, path, job, final, out, board, started, *fields, check)
            group = client.group(watched.id)
            return _write_group(client, group, final, out, board, started, check)
        except StopNow:
            workers.kill()  # what is committed stays: SQL commits are atomic
            if client is None or watched is None:
                raise
            raise Stopped(_stopped(client, watched, going_on)) from None
        finally:
            if interrupts.now:
                workers.kill()
            else:
                workers.stop(settings.shutdown_grace)
            if client is not None:
                client.close()


def _going_on(job_name: str | None, reuse: bool) -> str:
    """How a stopped run goes on, for the line that says it stopped."""
    if job_name:
        return "the same command resumes"
    if reuse:
        return "the same command computes only what is not saved yet"
    return "give --name NAME to make a run you can resume"


def _stopped(client: Client, watched: JobHandle | GroupWatch, going_on: str) -> str:
    """``stopped: 120 of 400 documents done and saved in ...; the same command resumes``."""
    from docqueue.producer.client import UnknownJob

    try:
        current = watched.progress()
    except UnknownJob:  # stopped before the job was created
        return f"stopped before any document was queued; {going_on}"
    total = current.total if current.total is not None else current.enqueued
    what = "job group" if isinstance(watched, GroupWatch) else "job"
    where = redact(client.settings.database())
    return (
        f"stopped: {current.done + current.failed} of {plural(total, 'document')} done and "
        f"saved in {where} ({what} {watched.id}); {going_on}"
    )


@dataclass
class _Stopping:
    """What the progress loop needs to stop gently on a first Ctrl-C."""

    interrupts: Interrupts
    #: How long the workers have to finish what they hold (DOCQUEUE_SHUTDOWN_GRACE).
    grace: float
    going_on: str
    #: The workers were asked to stop.
    asked: bool = False


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
    from docqueue.core.groups import TaskSpec

    specs = [TaskSpec(r.task, names[r.source], r.params, r.model_label) for r in runs]
    group_id = uuid.uuid4().hex
    group = JobSpec("", "", source=str(path.absolute()), reuse=reuse, group_id=group_id)
    start = partial(client.enqueue_tasks, specs, group, documents)
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
    spec = JobSpec(
        run.task,
        name,
        run.params,
        source=str(path.absolute()),
        name=job_name,
        input_digest=digest,
        reuse=reuse,
        callback_url=callback_url,
        model_label=run.model_label,
    )
    return JobHandle(client, job_id), partial(client.enqueue, spec, documents, job_id=job_id)


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
    check: Callable[[], None] = lambda: None,
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
        check()  # a second Ctrl-C stops the writing too
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
    state = client.job(job_id).webhook(send_due=True)
    if state is None:
        return None
    if state.delivered_at is not None:
        return f"webhook delivery {state.id} sent"
    return (
        f"webhook delivery {state.id} not sent ({state.last_error}); a worker or "
        f"`docqueue serve` on {redact(client.settings.database())} retries it"
    )


def _write_group(
    client: Client,
    group: JobGroup,
    final: JobProgress,
    out: Path,
    board: Board,
    started: float,
    check: Callable[[], None] = lambda: None,
) -> Summary:
    """Write the joined rows; the summary counts documents (done: every task done)."""
    from docqueue.core.jobs import Progress as JobProgress

    errors: list[dict[str, Any]] = []
    states: Counter[str] = Counter()

    def keep(row: dict[str, Any]) -> None:
        check()
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
        from docqueue.core.groups import group_job_ids
        from docqueue.producer.client import JobHandle

        self.id = group_id
        self.jobs = [JobHandle(client, job_id) for job_id in group_job_ids(group_id, tasks)]

    def progress(self) -> JobProgress:
        from docqueue.core.jobs import Progress as JobProgress

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


def check_task(
    source: str,
    task: str,
    settings: Settings,
    *,
    local_only: bool,
    params: dict[str, Any] | None = None,
) -> None:
    """Refuse a task the model's family cannot do (a GPT-2 asked to summarize),
    naming the tasks it can do, or parameters it cannot take (zero-shot labels on a
    classifier with its own head), before anything is started.  A local model's
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
    tasks = tasks_of(family)
    if task not in tasks:
        raise AnnotateError(cannot_do(source, task, tasks), ExitCode.USAGE)
    refused = declared(task).refusal(family, params or {}, source)
    if refused:
        raise AnnotateError(refused, ExitCode.USAGE)


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

    def say(self, text: str) -> None:
        """A line above the bar (the bar goes on below it)."""
        console.print(text, markup=False, highlight=False, soft_wrap=True)

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
    stopping: _Stopping,
) -> JobProgress:
    """Enqueue on a thread (``start``) and show progress until the job finishes.
    ``ready`` says whether a worker is up (the board then says "annotating").
    Workers publish on a job's channel after each commit: the progress is read
    again at once then, and at least every quarter second.  After a first Ctrl-C
    the workers finish what they hold and stop, the bar still moving; then
    :class:`Stopped` says what is saved."""
    jobs = job.jobs if isinstance(job, GroupWatch) else [job]
    commits = CommitNotices(client.redis, [done_channel(j.id) for j in jobs])
    try:
        return _follow(workers, client, job, start, board, ready, commits, stopping)
    finally:
        commits.close()


def _stop_gently(
    workers: LocalWorkers,
    client: Client,
    job: JobHandle | GroupWatch,
    board: Board,
    stopping: _Stopping,
) -> None:
    """A first Ctrl-C: say at once what happens, and ask the workers to finish."""
    jobs = job.jobs if isinstance(job, GroupWatch) else [job]
    try:
        held = plural(held_documents(client.redis, [j.id for j in jobs]), "document")
    except Exception:  # Redis away: say it without the number
        held = "the documents"
    board.say(
        f"stopping: the workers finish and save what they can of the {held} they hold "
        f"in {stopping.grace:g}s (the rest stay pending); Ctrl-C again stops now; "
        f"{stopping.going_on}"
    )
    board.bar.update(board.task, description="stopping")
    workers.request_stop()
    stopping.asked = True


class CommitNotices:
    """The workers' notices of commits to some jobs (Redis pub/sub).  While Redis
    does not answer (restarted, failing over), waiting for one is a plain sleep and
    the subscription is made again later: progress is read from SQL either way, so
    a Redis restart only slows the board down."""

    def __init__(self, redis: Any, channels: list[str]) -> None:
        self.redis, self.channels = redis, channels
        self.pubsub: Any = None

    def wait(self, timeout: float) -> None:
        """Until a notice comes (taking any others already there), or ``timeout``."""
        try:
            if self.pubsub is None:
                self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                self.pubsub.subscribe(*self.channels)
            if self.pubsub.get_message(timeout=timeout) is not None:
                while self.pubsub.get_message(timeout=0) is not None:
                    pass  # several commits since: one read covers them
        except RedisError:
            self.close()
            time.sleep(timeout)

    def close(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(RedisError):
                self.pubsub.close()
            self.pubsub = None


def _follow(
    workers: LocalWorkers,
    client: Client,
    job: JobHandle | GroupWatch,
    start: Callable[[], object],
    board: Board,
    ready: Callable[[], bool],
    commits: CommitNotices,
    stopping: _Stopping,
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
        if not annotating and not stopping.asked and (handled or ready()):
            board.phase("annotating")
            annotating = True
        stopping.interrupts.check()
        if stopping.interrupts.stopping and not stopping.asked:
            _stop_gently(workers, client, job, board, stopping)
        if handled and first_seen is None:
            first_seen = (time.monotonic(), handled)
        rate = ""
        if first_seen is not None and time.monotonic() - first_seen[0] >= 1.0:
            since, baseline = first_seen
            rate = f"{per_second((handled - baseline) / (time.monotonic() - since))} docs/s"
        bar.update(shown, completed=handled, total=total or None, rate=rate)
        if current.finished:
            return current
        if workers.all_exited():
            if stopping.asked:
                raise Stopped(_stopped(client, job, stopping.going_on))
            raise AnnotateError(f"worker stopped: {workers.failure()}")
        commits.wait(0.25)
