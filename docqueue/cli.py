"""The ``docqueue`` command.

    docqueue annotate docs.jsonl --task classify --labels "billing,outage,praise" --out out.jsonl
    docqueue worker --model sentiment=/models/sst2 [--device cuda:0 | --gpus all]
    docqueue enqueue docs.jsonl --task classify --model sentiment      # prints the job id
    docqueue status JOB
    docqueue export JOB --out results.jsonl
    docqueue resume JOB

Errors are reported as one line on stderr and an exit code, never a traceback; the
exit codes are :class:`docqueue.errors.ExitCode`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from docqueue.config import Settings, redact
from docqueue.errors import ExitCode, one_line
from docqueue.tasks import task_list

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
        help='Zero-shot labels for classify: "billing,outage,praise" or "billing=invoices and '
        'refunds,outage=the service is down"',
    ),
]
TextFieldOpt = Annotated[str, typer.Option("--text-field", help="Field holding the text")]
IdFieldOpt = Annotated[str, typer.Option("--id-field", help="Field holding your document id")]


def fail(message: str, code: int = ExitCode.USAGE) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def parse_params(pairs: list[str] | None, labels: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise fail(f"--param {pair!r}: expected NAME=VALUE")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    if labels:
        entries = [e.strip() for e in labels.split(",") if e.strip()]
        if any("=" in e for e in entries):
            params["labels"] = {
                name.strip(): (text.strip() or name.strip())
                for name, _, text in (e.partition("=") for e in entries)
            }
        else:
            params["labels"] = entries
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


@app.command()
def annotate(
    path: Annotated[Path, typer.Argument(help="JSONL or CSV file of documents")],
    task: TaskOpt = "classify",
    model: Annotated[
        str | None, typer.Option("--model", help="Local model directory or hub id")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Where to write results (.jsonl or .csv)")
    ] = Path("results.jsonl"),
    labels: LabelsOpt = None,
    param: ParamOpt = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda:0, ...")] = None,
) -> None:
    """Annotate a file end to end: starts Redis, the SQLite ledger and workers itself."""
    from docqueue.annotate import AnnotateError
    from docqueue.annotate import annotate as run
    from docqueue.params import InvalidParams, validate_params
    from docqueue.producer.readers import InputError

    _logging("WARNING")
    settings = settings_or_exit()
    params = parse_params(param, labels)
    try:
        validate_params(task, params, max_new_tokens_cap=settings.max_new_tokens_cap)
        from docqueue.worker.models import default_model

        source = model or default_model(task, labels=bool(params.get("labels")))
        summary = run(
            path,
            task=task,
            source=source,
            params=params,
            out=out,
            settings=settings,
            text_field=text_field,
            id_field=id_field,
            device=device,
        )
    except (InvalidParams, InputError) as exc:
        raise fail(str(exc)) from None
    except AnnotateError as exc:
        raise fail(str(exc), exc.code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", ExitCode.INTERRUPTED) from None
    progress = summary.progress
    rate = (progress.done + progress.failed) / max(summary.seconds, 1e-9)
    err.print(
        f"{progress.done} done, {progress.failed} failed of {progress.total} documents in "
        f"{summary.seconds:.1f}s ({rate:,.0f} docs/s including start-up) -> {out}  "
        f"[job {summary.job_id}]",
        soft_wrap=True,
    )
    for row in summary.errors:
        who = f"id {row['id']}" if row.get("id") is not None else f"document {row['seq']}"
        err.print(f"  {who}: {row['error']}", soft_wrap=True)
    raise typer.Exit(ExitCode.SOME_FAILED if progress.failed else ExitCode.OK)


@app.command()
def worker(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="NAME=PATH_OR_HUB_ID; repeat for several models"),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda:0, ...")] = None,
    gpus: Annotated[
        str | None, typer.Option("--gpus", help='"all" or a list like 0,1: one process per GPU')
    ] = None,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Serve models from the queue (needs DOCQUEUE_REDIS_URL and DOCQUEUE_DATABASE_URL)."""
    from docqueue.protocol import is_model_name

    models: dict[str, str] = {}
    for spec in model or []:
        name, sep, source = spec.partition("=")
        if not sep or not source or not is_model_name(name):
            raise fail(f"--model {spec!r}: expected NAME=PATH_OR_HUB_ID with a simple NAME")
        models[name] = source
    settings = settings_or_exit(models=models or None, device=device)
    if not settings.models:
        raise fail("no models: pass --model NAME=PATH (or set DOCQUEUE_MODELS)")
    devices = _gpus(gpus) if gpus else []
    if not settings.redis():
        raise fail("set DOCQUEUE_REDIS_URL (e.g. redis://localhost:6379/0)")
    if devices:
        raise typer.Exit(_per_gpu(devices, settings, loglevel))
    # The worker's intake and writer threads share the CPU with torch: idle OpenMP
    # threads must sleep, not spin (set before torch is imported).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _logging(loglevel)
    from docqueue.worker.models import ModelUnavailable
    from docqueue.worker.service import run_worker

    try:
        code = run_worker(settings, settings.redis(), loglevel=loglevel)  # type: ignore[arg-type]
    except ModelUnavailable as exc:
        raise fail(str(exc), ExitCode.SERVICE) from None
    raise typer.Exit(code)


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


def _per_gpu(devices: list[str], settings: Settings, loglevel: str) -> int:
    """One worker process per GPU, each pinned to its device; signals are forwarded."""
    from docqueue.launcher import LocalWorkers

    workers = LocalWorkers(settings, settings.models, devices, loglevel=loglevel)
    workers.forward_signals()
    return workers.wait()


@app.command()
def enqueue(
    path: Annotated[Path, typer.Argument(help="JSONL or CSV file of documents")],
    task: TaskOpt = "classify",
    model: Annotated[str, typer.Option("--model", help="Model NAME as the workers know it")] = "",
    labels: LabelsOpt = None,
    param: ParamOpt = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
) -> None:
    """Queue a file of documents as one job; prints the job id."""
    from docqueue.params import InvalidParams
    from docqueue.producer.client import PublishFailed
    from docqueue.producer.readers import InputError, read_documents

    if not model:
        raise fail("--model NAME is required")
    settings = settings_or_exit()
    client = client_or_exit(settings)
    job_id = uuid.uuid4().hex
    try:
        job = client.submit_many(
            read_documents(path, text_field=text_field, id_field=id_field),
            task=task,
            model=model,
            params=parse_params(param, labels),
            source=str(path),
            job_id=job_id,
        )
    except (InvalidParams, InputError) as exc:
        raise fail(str(exc)) from None
    except PublishFailed as exc:
        raise fail(str(exc), ExitCode.SERVICE) from None
    progress = job.progress()
    err.print(f"{progress.total} documents queued ({progress.failed} rejected at the door)")
    print(job.id)


@app.command()
def status(job_id: Annotated[str, typer.Argument(help="Job id")]) -> None:
    """Progress of a job, and which workers serve its model."""
    from docqueue.producer.client import UnknownJob

    client = client_or_exit(settings_or_exit())
    try:
        state = client.job(job_id).status()
    except UnknownJob as exc:
        raise fail(str(exc)) from None
    job, current = state.job, state.progress
    total = "still enqueuing" if current.total is None else str(current.total)
    print(f"job {job.id}: {job.task} with model {job.model} ({job.lane})")
    print(
        f"  documents: {total}; done {current.done}, failed {current.failed}, "
        f"pending {current.pending}"
    )
    now = time.time()
    for w in state.workers:
        print(
            f"  worker {w.id} on {w.device}: {w.documents} documents, "
            f"last heartbeat {now - w.last_seen:.0f}s ago"
        )
    if not state.workers:
        last = state.last_seen
        seen = "never seen" if last is None else f"last heartbeat {now - last:.0f}s ago"
        print(f"  no live worker serves model {job.model} ({seen})")
    if current.finished:
        raise typer.Exit(ExitCode.SOME_FAILED if current.failed else ExitCode.OK)


@app.command()
def export(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    out: Annotated[Path, typer.Option("--out", help=".jsonl or .csv")] = Path("results.jsonl"),
) -> None:
    """Write a job's results, with your document ids, in input order."""
    from docqueue.producer.results import write_rows

    client = client_or_exit(settings_or_exit())
    count = write_rows(client.job(job_id).results(), out)
    if count == 0:
        raise fail(f"no job {job_id} (or it has no documents)")
    err.print(f"{count} rows -> {out}")


@app.command()
def resume(job_id: Annotated[str, typer.Argument(help="Job id")]) -> None:
    """Re-publish the documents SQL says are not done (after Redis lost its queue)."""
    from docqueue.producer.client import UnknownJob

    client = client_or_exit(settings_or_exit())
    try:
        count = client.resume(job_id)
    except UnknownJob as exc:
        raise fail(str(exc)) from None
    err.print(f"{count} documents re-published")
    print(count)


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
) -> None:
    """Benchmark docqueue against hand-written pipeline() loops, side by side."""
    from docqueue.bench import Options
    from docqueue.bench import run as run_bench

    _logging("WARNING")
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


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as exc:  # the last resort: one line, not a traceback
        if os.environ.get("DOCQUEUE_DEBUG"):
            raise
        err.print(f"[bold red]error:[/] {type(exc).__name__}: {_one_line(exc)}", soft_wrap=True)
        err.print("(set DOCQUEUE_DEBUG=1 for the traceback)")
        sys.exit(ExitCode.SERVICE)
