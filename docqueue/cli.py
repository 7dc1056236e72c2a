"""The ``docqueue`` command.

    docqueue annotate docs.jsonl --task classify --labels "billing,outage,praise" --out out.jsonl
    docqueue worker --model sentiment=/models/sst2 [--device cuda:0 | --gpus all]
    docqueue enqueue docs.jsonl --task classify --model sentiment      # prints the job id
    docqueue status JOB | docqueue status                          # a job | the queues
    docqueue export JOB --out results.jsonl
    docqueue resume JOB
    docqueue jobs [--state running|finished|cancelled] [--model M] [--name N]
    docqueue cancel JOB | docqueue delete JOB | docqueue prune [--older-than DAYS]
    docqueue dead-letters list | show ID | purge [ID...] [--all] | replay [ID...] [--all]
    docqueue serve [--host 127.0.0.1] [--port 8000] [--workers N]     # the HTTP API

Errors are reported as one line on stderr and an exit code, never a traceback; the
exit codes are :class:`docqueue.errors.ExitCode`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from docqueue.config import Settings, redact
from docqueue.errors import ExitCode, exit_now, one_line
from docqueue.schedules.cli import schedule_app
from docqueue.tasks import task_list

if TYPE_CHECKING:
    from rich.table import Table

    from docqueue.logs import LogFormat
    from docqueue.producer.client import JobSummary

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
err = Console(stderr=True, highlight=False)


TaskOpt = Annotated[str, typer.Option("--task", help=task_list())]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", help="Task parameter NAME=VALUE (VALUE read as JSON if it parses)"),
]
LabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--labels",
        help='Zero-shot labels for classify, plain names: "billing,outage,praise" '
        "(for descriptions use --label)",
    ),
]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        help="A zero-shot label for classify, NAME or NAME=DESCRIPTION (the description may "
        "contain commas); repeat once per label",
    ),
]
LabelsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--labels-file",
        help="Zero-shot labels from a file: one NAME[=DESCRIPTION] per line, or JSON "
        '(["billing", ...] or {"billing": "description", ...})',
    ),
]
TextFieldOpt = Annotated[str, typer.Option("--text-field", help="Field holding the text")]
JobNameOpt = Annotated[
    str | None,
    typer.Option("--name", help="A name for the job (docqueue jobs --name NAME finds it)"),
]
IdFieldOpt = Annotated[str, typer.Option("--id-field", help="Field holding your document id")]
CallbackOpt = Annotated[
    str | None,
    typer.Option(
        "--callback-url",
        help="POST the job's summary here when it finishes (a host of DOCQUEUE_WEBHOOK_HOSTS)",
    ),
]
InputArg = Annotated[
    Path,
    typer.Argument(
        help="Documents: .jsonl, .json, .csv, .tsv (each may be .gz), .parquet, a Hugging "
        "Face dataset directory, or - for JSONL on standard input"
    ),
]
OUTPUTS = ".jsonl, .csv, .parquet, .hf (a Hugging Face dataset directory) or .labelstudio.json"


@contextmanager
def readable(path: Path) -> Iterator[Path]:
    """``path``, or for ``-`` a copy of standard input (removed afterwards)."""
    if str(path) != "-":
        yield path
        return
    from docqueue.producer.readers import stdin_copy

    with stdin_copy() as copy:
        yield copy


def fail(message: str, code: int = ExitCode.USAGE) -> typer.Exit:
    """Print ``message`` (never read as markup: it holds paths, ids and user text)."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    err.print(f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from docqueue import __version__

        print(f"docqueue {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version"),
    ] = False,
) -> None:
    """Run Hugging Face models over streams of documents."""


def parse_params(
    pairs: list[str] | None,
    labels: str | None,
    label: list[str] | None = None,
    labels_file: Path | None = None,
) -> dict[str, Any]:
    from docqueue.labels import LabelsError, parse_labels

    params: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise fail(f"--param {pair!r}: expected NAME=VALUE")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    try:
        chosen = parse_labels(labels, label, labels_file)
    except LabelsError as exc:
        raise fail(str(exc)) from None
    if chosen is not None:
        if "labels" in params:
            raise fail("labels given twice: with --param labels and with a labels option")
        params["labels"] = chosen
    return params


def settings_or_exit(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        raise fail(f"settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def client_or_exit(settings: Settings) -> Any:
    from docqueue.producer.client import Client

    if not settings.redis():
        raise fail("set DOCQUEUE_REDIS_URL (e.g. redis://localhost:6379/0)")
    try:
        return Client(settings)
    except Exception as exc:
        raise fail(
            f"cannot reach the database or Redis: {_one_line(exc)}", ExitCode.SERVICE
        ) from None


def _one_line(exc: BaseException) -> str:
    """One line for a person, with any password in a URL hidden."""
    return redact(one_line(exc))


TasksOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--task",
        help="TASK or TASK:MODEL, once per task: --task classify:minilm --task embed:minilm "
        "runs both in one pass, the results joined per document (default: classify)",
    ),
]
ReuseOpt = Annotated[
    bool,
    typer.Option(
        "--reuse/--no-reuse",
        help="Copy the result of a document whose text, task, model and parameters were "
        "already computed, instead of computing it again",
    ),
]


@app.command()
def annotate(
    path: InputArg,
    task: TasksOpt = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Local model directory, hub id, or minilm (bundled)"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help=f"Where to write results: {OUTPUTS}")] = Path(
        "results.jsonl"
    ),
    labels: LabelsOpt = None,
    label: LabelOpt = None,
    labels_file: LabelsFileOpt = None,
    param: ParamOpt = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda:0, ...")] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="A name for the job: rerun with the same name and input to resume it "
            "instead of starting over",
        ),
    ] = None,
    callback_url: CallbackOpt = None,
    reuse: ReuseOpt = True,
) -> None:
    """Annotate a file end to end: starts Redis, the SQLite ledger and workers itself."""
    from docqueue.annotate import AnnotateError, annotate_tasks
    from docqueue.params import InvalidParams
    from docqueue.producer.extras import MissingExtra
    from docqueue.producer.readers import InputError

    _logging("WARNING")
    settings = settings_or_exit()
    params = parse_params(param, labels, label, labels_file)
    try:
        runs = task_runs(task or ["classify"], model, params, settings)
        with readable(path) as file:
            summary = annotate_tasks(
                file,
                runs,
                out=out,
                settings=settings,
                text_field=text_field,
                id_field=id_field,
                device=device,
                job_name=name,
                reuse=reuse,
                callback_url=callback_url,
            )
    except (InvalidParams, InputError, MissingExtra) as exc:
        raise fail(str(exc)) from None
    except AnnotateError as exc:
        raise fail(str(exc), exc.code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", ExitCode.INTERRUPTED) from None
    progress = summary.progress
    rate = (progress.done + progress.failed) / max(summary.seconds, 1e-9)
    reused = f", {progress.reused} results reused" if progress.reused else ""
    err.print(
        f"{progress.done} done, {progress.failed} failed of {progress.total} documents in "
        f"{summary.seconds:.1f}s ({rate:,.0f} docs/s including start-up){reused} -> {out}  "
        f"[{'job' if len(runs) == 1 else 'job group'} {summary.job_id}]",
        soft_wrap=True,
        markup=False,
    )
    for row in summary.errors:
        who = f"id {row['id']}" if row.get("id") is not None else f"document {row['seq']}"
        err.print(f"  {who}: {row['error']}", soft_wrap=True, markup=False)
    if progress.cancelled:
        err.print(f"  {progress.cancelled} documents cancelled", soft_wrap=True)
    if summary.webhook:
        err.print(summary.webhook, soft_wrap=True, markup=False)
    incomplete = progress.failed or progress.cancelled
    exit_now(ExitCode.SOME_FAILED if incomplete else ExitCode.OK)


def task_runs(
    specs: list[str], model: str | None, params: dict[str, Any], settings: Settings
) -> list[Any]:
    """``TASK`` or ``TASK:MODEL`` options as annotate's runs.  A task without a model
    takes ``--model``, else the default for the task.  With several tasks, zero-shot
    labels go to classify, and each ``--param`` to every task that takes it (one no
    task takes is refused)."""
    from docqueue.annotate import TaskRun
    from docqueue.params import PARAMS, validate_params
    from docqueue.worker.models import ModelUnavailable, default_model, resolve_source

    parsed = []
    for spec in specs:
        name, _, spec_model = spec.partition(":")
        parsed.append((name, spec_model or model))
    if len(parsed) > 1:
        for key in params:
            if not any(t in PARAMS and key in PARAMS[t].model_fields for t, _ in parsed):
                raise fail(f"--param {key}: none of the tasks takes it")
    runs = []
    for name, chosen in parsed:
        own = params
        if len(parsed) > 1 and name in PARAMS:
            own = {k: v for k, v in params.items() if k in PARAMS[name].model_fields}
        validate_params(name, own, max_new_tokens_cap=settings.max_new_tokens_cap)
        if name == "classify" and not chosen and not own.get("labels"):
            raise fail(
                "classify needs labels or a model: --label NAME once per label (or --labels "
                "a,b,c) for zero-shot labels with the bundled MiniLM, or --model DIR (or "
                "--task classify:DIR) for a classifier of your own"
            )
        try:  # a bundled name (--model minilm) becomes its directory
            labelled = bool(own.get("labels"))
            source = resolve_source(chosen) if chosen else default_model(name, labels=labelled)
        except ModelUnavailable as exc:
            raise fail(str(exc), ExitCode.SERVICE) from None
        runs.append(TaskRun(name, source, own))
    return runs


@app.command()
def worker(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="NAME=PATH_OR_HUB_ID, or minilm for the bundled all-MiniLM-L6-v2 (served as "
            "minilm); repeat for several models",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda:0, ...")] = None,
    gpus: Annotated[
        str | None, typer.Option("--gpus", help='"all" or a list like 0,1: one process per GPU')
    ] = None,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Serve models from the queue (needs DOCQUEUE_REDIS_URL and DOCQUEUE_DATABASE_URL)."""
    from docqueue.protocol import is_model_name
    from docqueue.worker.models import BUNDLED

    models: dict[str, str] = {}
    for spec in model or []:
        name, sep, source = spec.partition("=")
        if not sep and name in BUNDLED:
            source = name  # a bundled model, served under its own name
        elif not sep or not source or not is_model_name(name):
            raise fail(
                f"--model {spec!r}: expected NAME=PATH_OR_HUB_ID with a simple NAME, or a "
                f"bundled model ({', '.join(BUNDLED)})"
            )
        models[name] = source
    settings = settings_or_exit(models=models or None, device=device)
    if not settings.models:
        raise fail("no models: pass --model NAME=PATH (or set DOCQUEUE_MODELS)")
    if "database_url" not in settings.model_fields_set:
        raise fail(
            "set DOCQUEUE_DATABASE_URL to the database the producers use: a worker records "
            "results there, and a worker on a database of its own would take jobs it cannot "
            "record"
        )
    devices = _gpus(gpus) if gpus else []
    redis_url = settings.redis()
    if not redis_url:
        raise fail("set DOCQUEUE_REDIS_URL (e.g. redis://localhost:6379/0)")
    # The worker's intake and writer threads share the CPU with torch: idle OpenMP
    # threads must sleep, not spin (set before torch is imported: the device check
    # imports it).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _check_devices(devices or ([settings.device] if settings.device else []))
    if devices:
        raise typer.Exit(_per_gpu(devices, settings, loglevel))
    _logging(loglevel, settings.log_format)
    from docqueue.worker.metrics import MetricsUnavailable
    from docqueue.worker.models import ModelUnavailable
    from docqueue.worker.service import run_worker

    try:
        code = run_worker(settings, redis_url, loglevel=loglevel)
    except (ModelUnavailable, MetricsUnavailable) as exc:
        raise fail(str(exc), ExitCode.SERVICE) from None
    exit_now(code)


def _gpus(gpus: str) -> list[str]:
    """The devices ``--gpus all`` or ``--gpus 0,1`` names."""
    from docqueue.launcher import cuda_devices

    if gpus == "all":
        devices = cuda_devices()
    else:
        try:
            devices = [f"cuda:{int(g)}" for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise fail(f"--gpus {gpus!r}: expected all or a list like 0,1") from None
    if not devices:
        raise fail("no GPU visible", ExitCode.SERVICE)
    return devices


def _check_devices(devices: list[str]) -> None:
    """One line, not a worker's AssertionError, for a device this machine lacks."""
    from docqueue.launcher import device_problem

    for device in devices:
        if problem := device_problem(device):
            raise fail(problem)


def _per_gpu(devices: list[str], settings: Settings, loglevel: str) -> int:
    """One worker process per GPU, each pinned to its device; signals are forwarded."""
    from docqueue.launcher import LocalWorkers

    workers = LocalWorkers(settings, settings.models, devices, loglevel=loglevel)
    workers.forward_signals()
    return workers.wait()


@app.command()
def enqueue(
    path: InputArg,
    task: TaskOpt = "classify",
    model: Annotated[str, typer.Option("--model", help="Model NAME as the workers know it")] = "",
    labels: LabelsOpt = None,
    label: LabelOpt = None,
    labels_file: LabelsFileOpt = None,
    param: ParamOpt = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    name: JobNameOpt = None,
    callback_url: CallbackOpt = None,
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse/--no-reuse",
            help="Copy the result of a document whose text, task, model and parameters "
            "were already computed (off by default here; on for annotate)",
        ),
    ] = False,
) -> None:
    """Queue a file of documents as one job; prints the job id."""
    from docqueue.params import InvalidParams
    from docqueue.producer.client import EnqueueStopped
    from docqueue.producer.extras import MissingExtra
    from docqueue.producer.readers import (
        InputError,
        input_digest,
        read_documents,
        resume_command,
    )

    if not model:
        raise fail("--model NAME is required")
    settings = settings_or_exit()
    client = client_or_exit(settings)
    job_id = uuid.uuid4().hex
    try:
        with readable(path) as file:
            documents = read_documents(file, text_field=text_field, id_field=id_field)
            params = parse_params(param, labels, label, labels_file)
            job = client.submit_many(
                documents,
                task=task,
                model=model,
                params=params,
                source=None if file != path else str(path.absolute()),
                job_id=job_id,
                name=name,
                # what `docqueue resume` checks the file against, should this stop part way
                input_digest=input_digest(file, task, model, params, text_field, id_field),
                callback_url=callback_url,
                reuse=reuse,
            )
    except (InvalidParams, InputError, MissingExtra) as exc:
        raise fail(str(exc)) from None
    except EnqueueStopped as exc:
        command = resume_command(exc.job_id, text_field, id_field)
        raise fail(exc.explain(f"`{command}`"), ExitCode.SERVICE) from None
    total = job.progress().total or 0
    if total and job.rejected >= total:
        first = next(job.results())
        raise fail(
            f"{path}: all {total} documents were refused ({first['error']}); nothing was "
            f"queued (job {job.id})"
        )
    refused = f", {job.rejected} refused (their rows say why)" if job.rejected else ""
    err.print(f"{total - job.rejected} documents queued{refused}", markup=False)
    problem = client.coverage(model, task).problem()
    if problem:  # a typo in the model name, or its workers are down: say so, still queue
        warn(f"{problem}; the documents wait in the queue until one starts")
    print(job.id)


@app.command()
def status(
    job_id: Annotated[
        str | None, typer.Argument(help="Job id; without one, the queues, dead letters and workers")
    ] = None,
) -> None:
    """Progress, pace and live workers of a job; exit 0 done, 1 some failed, 4 running.
    Without a job: messages waiting per queue, dead letters and live workers."""
    from docqueue.producer.client import UnknownJob

    if job_id is None:
        _overview()
        return
    client = sql_client_or_exit(settings_or_exit())
    try:
        state = client.job(job_id).status()
    except UnknownJob as exc:
        raise fail(str(exc)) from None
    job, current = state.job, state.progress
    total = "still enqueuing" if current.total is None else str(current.total)
    print(f"job {job.id}: {job.task} with model {job.model} ({job.lane})")
    print(
        f"  documents: {total}; done {current.done}, failed {current.failed}, "
        f"pending {current.pending}" + (f"; reused {current.reused}" if job.reuse else "")
    )
    print(f"  {_pace(state)}")
    now = time.time()
    for w in state.workers:
        print(
            f"  worker {w.id} on {w.device}: {w.documents} documents, "
            f"last heartbeat {now - w.last_seen:.0f}s ago"
        )
    if state.problem:
        print(f"  {state.problem}")
    if not current.finished:
        raise typer.Exit(ExitCode.RUNNING)
    incomplete = current.failed or current.cancelled
    raise typer.Exit(ExitCode.SOME_FAILED if incomplete else ExitCode.OK)


def _overview() -> None:
    """What /metrics exports, for a person (both read Client.overview())."""
    client = client_or_exit(settings_or_exit())
    with _redis_errors():
        seen = client.overview()
    print("queues (messages waiting):" if seen.queues else "queues: none known yet")
    width = max((len(q.queue) for q in seen.queues), default=0)
    for queue in seen.queues:
        print(f"  {queue.queue:<{width}}  {queue.messages}")
    dead = seen.dead_letters
    print(f"dead letters: {dead.held} held (limit {dead.limit}), {dead.dropped} dropped")
    print(f"live workers: {len(seen.workers)}")
    for w in seen.workers:
        served = ", ".join(
            f"{name} ({', '.join(info.get('tasks', []))})" for name, info in w.models.items()
        )
        print(
            f"  worker {w.id} on {w.device}: {served}; {w.documents} documents, "
            f"last heartbeat {seen.at - w.last_seen:.0f}s ago"
        )


def _pace(state: Any) -> str:
    """``finished in 12s (45 docs/s)``, ``running for 3m 05s (45 docs/s), about 20s
    left``, or ``running for 4s, no document computed yet``."""
    rate = "" if state.rate is None else f" ({state.rate:,.1f} docs/s)"
    if state.progress.finished:
        return f"finished in {_duration(state.elapsed)}{rate}"
    if state.rate is None:
        return f"running for {_duration(state.elapsed)}, no document computed yet"
    return f"running for {_duration(state.elapsed)}{rate}, about {_duration(state.eta)} left"


def _duration(seconds: float | None) -> str:
    seconds = max(0.0, seconds or 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


@app.command()
def export(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    out: Annotated[Path, typer.Option("--out", help=OUTPUTS)] = Path("results.jsonl"),
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="The job's input file again: its rows' fields are written beside the "
            "results (Label Studio tasks need it for the text)",
        ),
    ] = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
) -> None:
    """Write a job's results, with your document ids, in input order."""
    from docqueue.producer.client import UnknownJob
    from docqueue.producer.extras import MissingExtra
    from docqueue.producer.readers import InputError, read_documents
    from docqueue.producer.results import OutputError, output_format

    try:
        output_format(out)
        inputs = None
        if input_file is not None:
            inputs = read_documents(input_file, text_field=text_field, id_field=id_field)
    except (OutputError, InputError, MissingExtra) as exc:
        raise fail(str(exc)) from None
    client = sql_client_or_exit(settings_or_exit())
    try:
        count = client.job(job_id).export(out, inputs=inputs, text_field=text_field)
    except (UnknownJob, OutputError, InputError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"could not write {out}: {_one_line(exc)}", ExitCode.SERVICE) from None
    err.print(f"{count} rows -> {out}", markup=False)


@app.command()
def resume(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
) -> None:
    """Re-publish the documents SQL says are not done (after Redis lost its queue); a
    job whose enqueue stopped part way gets the rest of its file, read with the
    fields enqueue was given."""
    from docqueue.producer.client import EnqueueStopped, UnknownJob
    from docqueue.producer.readers import InputError, NoInput, rest_of_input, resume_command

    client = client_or_exit(settings_or_exit())
    try:
        job = client.job(job_id).info()
        documents = None
        if job.total is None and job.cancelled_at is None:
            try:
                documents = rest_of_input(job, text_field, id_field)
            except NoInput as exc:  # the stored documents can still go
                warn(f"{exc}; re-publishing the ones stored")
        count = client.resume(job_id, documents=documents)
    except (UnknownJob, InputError) as exc:
        raise fail(str(exc)) from None
    except EnqueueStopped as exc:
        command = resume_command(job_id, text_field, id_field)
        raise fail(exc.explain(f"`{command}`"), ExitCode.SERVICE) from None
    err.print(f"{count} documents re-published")
    print(count)


def sql_client_or_exit(settings: Settings) -> Any:
    """A Client for the commands that need only SQL (no Redis)."""
    from sqlalchemy import make_url

    from docqueue.producer.client import Client

    url = make_url(settings.database())
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise fail(
            f"no database at {url.database}: run this where annotate ran (it keeps "
            "docqueue.db there), or set DOCQUEUE_DATABASE_URL"
        )
    try:
        return Client(settings)
    except Exception as exc:
        raise fail(f"cannot reach the database: {_one_line(exc)}", ExitCode.SERVICE) from None


@app.command()
def jobs(
    state: Annotated[
        str | None, typer.Option("--state", help="running, finished or cancelled")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model NAME of the jobs")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Jobs with this name")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Show at most this many")] = 50,
    interactive: Annotated[
        bool,
        typer.Option(
            "--interactive", help="Also the one-document jobs of Client.submit (one per call)"
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """List jobs, newest first, with their progress."""
    from rich.measure import Measurement

    from docqueue.producer.client import JOB_STATES

    if state is not None and state not in JOB_STATES:
        raise fail(f"--state {state!r}: use one of {', '.join(JOB_STATES)}")
    if limit < 1:
        raise fail(f"--limit {limit}: use 1 or more")
    client = sql_client_or_exit(settings_or_exit())
    found = client.jobs(state=state, model=model, name=name, limit=limit, interactive=interactive)
    if as_json:
        for summary in found:
            print(json.dumps(_job_json(summary), ensure_ascii=False))
    elif found:
        table = _jobs_table(found)
        out = Console(highlight=False)
        # One line per job, however narrow the terminal (as docker ps does): squeezed
        # into 80 columns, ids and states would be cut.
        natural = Measurement.get(out, out.options.update_width(10_000), table).maximum
        out.width = max(out.width, natural)
        out.print(table)
    else:
        err.print("no jobs" + (" match" if state or model or name else ""))


def _job_json(summary: JobSummary) -> dict[str, Any]:
    job, progress = summary.job, summary.progress
    return {
        "id": job.id,
        "name": job.name,
        "state": progress.state,
        "task": job.task,
        "model": job.model,
        "lane": job.lane,
        "source": job.source,
        "total": progress.total,
        "done": progress.done,
        "failed": progress.failed,
        "cancelled": progress.cancelled,
        "pending": progress.pending,
        "reused": progress.reused,
        "created_at": job.created_at,
        "cancelled_at": job.cancelled_at,
    }


def _jobs_table(found: list[JobSummary]) -> Table:
    """Jobs as a table; text from users (names, models, files) is shown as written,
    never read as markup."""
    from rich.table import Table
    from rich.text import Text

    from docqueue.producer.client import ago

    table = Table(box=None, pad_edge=False)
    table.add_column("JOB", no_wrap=True)
    for column in ("NAME", "STATE", "DONE", "FAILED", "CANCELLED", "TASK", "MODEL", "CREATED"):
        numeric = column in ("DONE", "FAILED", "CANCELLED")
        table.add_column(column, justify="right" if numeric else "left")
    now = time.time()
    for summary in found:
        job, progress = summary.job, summary.progress
        total = "…" if progress.total is None else str(progress.total)
        table.add_row(
            job.id,
            Text(job.name or ""),
            progress.state,
            f"{progress.done}/{total}",
            str(progress.failed),
            str(progress.cancelled),
            job.task,
            Text(job.model),
            f"{ago(now - job.created_at)} ago",
        )
    return table


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="Job id")]) -> None:
    """Cancel a job: documents not yet computed become cancelled, finished ones stay."""
    from docqueue.producer.client import UnknownJob

    client = sql_client_or_exit(settings_or_exit())
    try:
        job = client.job(job_id)
        cancelled = job.cancel()
        progress = job.progress()
    except UnknownJob as exc:
        raise fail(str(exc)) from None
    if progress.state != "cancelled":
        print(f"job {job_id} had already finished: nothing to cancel")
        return
    print(
        f"job {job_id} cancelled: {cancelled} documents cancelled; {progress.done} done and "
        f"{progress.failed} failed stay"
    )


@app.command()
def delete(job_id: Annotated[str, typer.Argument(help="Job id")]) -> None:
    """Delete a job, its documents and results (workers drop its late messages)."""
    from docqueue.producer.client import UnknownJob

    client = sql_client_or_exit(settings_or_exit())
    try:
        deleted = client.job(job_id).delete()
    except UnknownJob as exc:
        raise fail(str(exc)) from None
    print(f"job {job_id} deleted with its {deleted} documents and their results")


@app.command()
def prune(
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than",
            help="Days; default DOCQUEUE_RETENTION_DAYS (30)",
        ),
    ] = None,
) -> None:
    """Delete finished and cancelled jobs created more than N days ago."""
    if older_than is not None and not older_than > 0:
        raise fail(f"--older-than {older_than}: use a number of days above 0")
    settings = settings_or_exit()
    client = sql_client_or_exit(settings)
    days = settings.retention_days if older_than is None else older_than
    deleted = client.prune(days)
    print(f"{len(deleted)} finished or cancelled jobs older than {days:g} days deleted")


dead_letters_app = typer.Typer(
    no_args_is_help=True,
    help="Messages set aside because they could not be run: list, show, purge, replay.",
)
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(schedule_app, name="schedule")
DeadLetterIds = Annotated[list[int] | None, typer.Argument(help="Dead letter ids")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter")]


def _dead_letter_client() -> Any:
    """A Client for the dead letters; a Redis that cannot be reached is one line."""
    return client_or_exit(settings_or_exit())


@contextmanager
def _redis_errors() -> Iterator[None]:
    from redis.exceptions import RedisError

    try:
        yield
    except RedisError as exc:
        raise fail(f"Redis: {_one_line(exc)}", ExitCode.SERVICE) from None


@dead_letters_app.command("list")
def dead_letters_list(
    limit: Annotated[int, typer.Option("--limit", help="Show at most this many")] = 100,
    offset: Annotated[int, typer.Option("--offset", help="Skip this many newest first")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """List dead letters, newest first: id, queue, reason, size, when."""
    if limit < 1 or offset < 0:
        raise fail(f"--limit {limit} --offset {offset}: use a limit of 1 or more, offset 0 or more")
    client = _dead_letter_client()
    with _redis_errors():
        found = client.dead_letters(limit=limit, offset=offset)
        counts = client.dead_letter_counts()
    if as_json:
        for entry in found:
            print(json.dumps(entry.to_json(), ensure_ascii=False))
    elif found:
        from rich.measure import Measurement

        table = _dead_letters_table(found)
        out = Console(highlight=False)
        # One line per entry, as `docqueue jobs` prints its table.
        out.width = max(
            out.width, Measurement.get(out, out.options.update_width(10_000), table).maximum
        )
        out.print(table)
    summary = f"{counts.held} dead letters held (limit {counts.limit}); {counts.dropped} dropped"
    err.print(escape(summary), soft_wrap=True)


def _dead_letters_table(found: list[Any]) -> Table:
    """Dead letters as a table; queues and reasons are shown as written, never read
    as markup."""
    from rich.table import Table
    from rich.text import Text

    from docqueue.producer.client import ago

    table = Table(box=None, pad_edge=False)
    for column in ("ID", "QUEUE", "REASON", "SIZE", "WHEN"):
        table.add_column(column, justify="right" if column in ("ID", "SIZE") else "left")
    now = time.time()
    for entry in found:
        size = f"{entry.size:,}" + (" (cut)" if entry.truncated else "")
        table.add_row(
            str(entry.id),
            Text(entry.queue),
            Text(entry.reason),
            size,
            f"{ago(now - entry.at)} ago",
        )
    return table


@dead_letters_app.command("show")
def dead_letters_show(
    entry_id: Annotated[int, typer.Argument(help="Dead letter id")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object")] = False,
) -> None:
    """Show one dead letter: where it came from, why, when, and the message itself."""
    client = _dead_letter_client()
    with _redis_errors():
        entry = client.dead_letter(entry_id)
    if entry is None:
        raise fail(f"no dead letter {entry_id}")
    if as_json:
        print(json.dumps(entry.to_json(body=True), ensure_ascii=False))
        return
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.at))
    kept = f", only its first {len(entry.body or b''):,} kept" if entry.truncated else ""
    print(f"id:      {entry.id}")
    print(f"queue:   {entry.queue}")
    print(f"reason:  {entry.reason}")
    print(f"when:    {at}")
    print(f"size:    {entry.size:,} bytes{kept}")
    print()
    print((entry.body or b"").decode("utf-8", errors="replace"))


def _chosen(ids: list[int] | None, every: bool, verb: str) -> list[int] | None:
    """The ids a purge or replay names, or None for --all; both or neither is refused."""
    if every and ids:
        raise fail(f"{verb} either some ids or --all, not both")
    if not every and not ids:
        raise fail(f"{verb} what? name dead letter ids, or --all")
    return None if every else list(ids or [])


@dead_letters_app.command("purge")
def dead_letters_purge(ids: DeadLetterIds = None, every: AllOpt = False) -> None:
    """Delete dead letters for good."""
    chosen = _chosen(ids, every, "purge")
    client = _dead_letter_client()
    with _redis_errors():
        removed = client.purge_dead_letters(chosen)
    missing = 0 if chosen is None else len(set(chosen)) - removed
    print(f"{removed} dead letters purged" + (f" ({missing} not found)" if missing else ""))


@dead_letters_app.command("replay")
def dead_letters_replay(ids: DeadLetterIds = None, every: AllOpt = False) -> None:
    """Put dead letters back on their queues (after a fix); exit 1 if any could not be."""
    chosen = _chosen(ids, every, "replay")
    client = _dead_letter_client()
    with _redis_errors():
        replayed, refused = client.replay_dead_letters(chosen)
    for entry_id, why in refused.items():
        warn(f"dead letter {entry_id} not replayed: {why}")
    print(f"{len(replayed)} dead letters replayed")
    if refused:
        raise typer.Exit(ExitCode.SOME_FAILED)


@app.command()
def health(
    worker: Annotated[
        bool,
        typer.Option("--worker", help="Also require a live worker heartbeat from this host"),
    ] = False,
) -> None:
    """Exit 0 when the database and Redis answer (and, with --worker, a worker on this
    host beats); else exit 3 saying what is wrong.  For container health checks."""
    import socket

    from docqueue.health import problem

    client = client_or_exit(settings_or_exit())
    try:
        found = problem(client, socket.gethostname() if worker else None)
    finally:
        client.close()
    if found is not None:
        raise fail(found, ExitCode.SERVICE)
    print("ok")


@app.command()
def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on; anything but loopback needs DOCQUEUE_API_TOKENS",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    log_level: Annotated[
        str, typer.Option("--log-level", help="critical, error, warning, info, debug or trace")
    ] = "info",
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Server processes sharing the port (each with its own connections)",
        ),
    ] = 1,
) -> None:
    """Serve the HTTP API (needs DOCQUEUE_REDIS_URL and DOCQUEUE_DATABASE_URL)."""
    try:
        from docqueue.api.auth import bind_problem
        from docqueue.api.server import LOG_LEVELS
        from docqueue.api.server import serve as run_server
    except ImportError as exc:
        raise fail(
            f'docqueue serve needs the api extra ({_one_line(exc)}): pip install "docqueue[api]"'
        ) from None
    if log_level.lower() not in LOG_LEVELS:
        raise fail(f"--log-level {log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    settings = settings_or_exit()
    if problem := bind_problem(host, settings):
        raise fail(problem)
    if "database_url" not in settings.model_fields_set:
        raise fail(
            "set DOCQUEUE_DATABASE_URL to the database the workers use: the API records "
            "jobs there, and workers on another database could not run them"
        )
    client = client_or_exit(settings)
    from redis.exceptions import RedisError

    try:
        client.redis.ping()
    except (RedisError, OSError) as exc:
        raise fail(f"cannot reach Redis: {_one_line(exc)}", ExitCode.SERVICE) from None
    try:
        listening = run_server(settings, client, host, port, log_level.lower(), workers)
    finally:
        client.close()
    if not listening:
        raise fail(f"could not listen on {host}:{port} (see the line above)", ExitCode.SERVICE)


@app.command()
def bench(
    task: TaskOpt = "classify",
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda:0, ...")] = None,
    shape: Annotated[
        str | None, typer.Option("--shape", help="micro, tiny (CPU) or standard (GPU)")
    ] = None,
    docs: Annotated[
        int | None,
        typer.Option("--docs", help="Documents for (c) and (d) [20,000]; with --soak [100,000]"),
    ] = None,
    baseline_docs: Annotated[
        int | None, typer.Option("--baseline-docs", help="Documents for (b) and (c)")
    ] = None,
    corpus: Annotated[Path | None, typer.Option("--corpus", help="JSONL with a text field")] = None,
    latency_bulk: Annotated[int, typer.Option("--latency-bulk")] = 50_000,
    singles: Annotated[int, typer.Option("--singles")] = 20_000,
    skip: Annotated[
        str, typer.Option("--skip", help="Comma list of a,b,sorted,c,d,latency,singles,mixed")
    ] = "",
    soak: Annotated[
        bool,
        typer.Option(
            "--soak",
            help="Instead: short documents through CPU workers with the micro classifier; "
            "prints docs/s, each worker's memory and the one-row-per-document check",
        ),
    ] = False,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes for --soak")] = 2,
    whole_process: Annotated[
        bool,
        typer.Option(
            "--whole-process",
            help="Instead: the plain script a user would write against docqueue annotate, "
            "each a fresh process timed to its output file, at one document and a whole "
            "file (--docs), medians of --rounds interleaved runs",
        ),
    ] = False,
    rounds: Annotated[int, typer.Option("--rounds", help="Runs per arm for --whole-process")] = 5,
) -> None:
    """Benchmark docqueue against hand-written pipeline() loops, side by side."""
    from docqueue.bench import DEFAULT_CORPUS, Options, load_corpus
    from docqueue.bench import run as run_bench

    _logging("WARNING")
    if whole_process:
        import tempfile

        from docqueue.bench import wholeprocess
        from docqueue.worker.dtype import whole_process_dtype

        settings = settings_or_exit()
        wholeprocess.run(
            task,
            Path(tempfile.gettempdir()) / "docqueue-bench" / "whole-process",
            load_corpus(corpus or DEFAULT_CORPUS),
            whole_file=docs,
            rounds=rounds,
            dtype=whole_process_dtype(task, settings.dtype),
            threads=settings.torch_threads,
        )
        return
    if soak:
        from docqueue.bench import soak as soak_bench

        held = soak_bench.run(settings_or_exit(), 100_000 if docs is None else docs, workers)
        raise typer.Exit(ExitCode.OK if held else ExitCode.SOME_FAILED)
    run_bench(
        Options(
            task=task,
            device=device,
            shape=shape,
            docs=20_000 if docs is None else docs,
            baseline_docs=baseline_docs,
            corpus=corpus,
            latency_bulk=latency_bulk,
            singles=singles,
            skip={s.strip() for s in skip.split(",") if s.strip()},
            settings=settings_or_exit(),
        )
    )


def _logging(level: str, log_format: LogFormat = "text") -> None:
    from docqueue.logs import setup_logging

    setup_logging(level, log_format)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as exc:  # the last resort: one line, not a traceback
        if os.environ.get("DOCQUEUE_DEBUG"):
            raise
        err.print(
            f"[bold red]error:[/] {type(exc).__name__}: {escape(_one_line(exc))}", soft_wrap=True
        )
        err.print("(set DOCQUEUE_DEBUG=1 for the traceback)")
        sys.exit(ExitCode.SERVICE)
