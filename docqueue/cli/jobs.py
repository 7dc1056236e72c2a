"""The commands on jobs already queued: ``status`` (or the queues, without a job),
``export``, ``jobs``, ``cancel``, ``delete`` and ``prune``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from docqueue.cli.options import (
    OUT_DEFAULT,
    OUTPUTS,
    IdFieldOpt,
    TextFieldOpt,
    client_or_exit,
    err,
    error_line,
    fail,
    out_or_exit,
    print_table,
    redis_errors,
    settings_or_exit,
    sql_client_or_exit,
)
from docqueue.errors import ExitCode
from docqueue.humanize import per_second, plural

if TYPE_CHECKING:
    from rich.table import Table

    from docqueue.producer.client import JobSummary


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
    cancelled = f", cancelled {current.cancelled}" if current.cancelled else ""
    print(f"job {job.id}: {job.task} with model {job.model_shown} ({job.lane})")
    print(f"  state: {_state(current)}")
    print(
        f"  documents: {total}; done {current.done}, failed {current.failed}, "
        f"pending {current.pending}{cancelled}"
        + (f"; reused {current.reused}" if job.reuse else "")
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
    if current.failure is not None:
        print(f"  failed: {current.failure}")
    if not current.finished:
        raise typer.Exit(ExitCode.RUNNING)
    incomplete = current.failed or current.cancelled or current.failure is not None
    raise typer.Exit(ExitCode.SOME_FAILED if incomplete else ExitCode.OK)


def _overview() -> None:
    """What /metrics exports, for a person (both read Client.overview())."""
    client = client_or_exit(settings_or_exit())
    with redis_errors():
        seen = client.overview()
    print(
        "queues (messages waiting):"
        if seen.queues
        else "queues: none holds messages, and no live worker serves one"
    )
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


def _state(progress: Any) -> str:
    """``running``, ``finished``, or ``cancelled at 2026-12-07 10:15:02 (3m ago)``:
    the state ``jobs``, the API and the page show (:attr:`Progress.state`)."""
    if progress.cancelled_at is None:
        return str(progress.state)
    from docqueue.producer.client import ago

    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(progress.cancelled_at))
    return f"{progress.state} at {at} ({ago(time.time() - progress.cancelled_at)} ago)"


def _pace(state: Any) -> str:
    """``finished in 12s (45 docs/s)``, ``cancelled after 56s (20 docs/s)``,
    ``running for 3m 05s (45 docs/s), about 20s left``, or ``running for 4s, no
    document computed yet``."""
    rate = "" if state.rate is None else f" ({per_second(state.rate)} docs/s)"
    if state.progress.state == "cancelled":
        return f"cancelled after {_duration(state.elapsed)}{rate}"
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


def export(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    out: Annotated[Path | None, typer.Option("--out", help=f"{OUTPUTS} {OUT_DEFAULT}")] = None,
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
    from docqueue.formats.extras import MissingExtra
    from docqueue.formats.readers import InputError, read_documents
    from docqueue.formats.results import OutputError, output_format
    from docqueue.producer.client import UnknownJob

    out = out_or_exit(out)
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
        raise fail(f"could not write {out}: {error_line(exc)}", ExitCode.SERVICE) from None
    err.print(f"{plural(count, 'row')} -> {out}", markup=False)


def jobs(
    state: Annotated[
        str | None, typer.Option("--state", help="running, finished, cancelled or failed")
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
    from docqueue.core.jobs import JOB_STATES

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
        print_table(_jobs_table(found))
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
        "model_label": job.model_label,
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
        "failure": progress.failure,
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
            Text(job.model_shown),
            f"{ago(now - job.created_at)} ago",
        )
    return table


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
        f"job {job_id} cancelled: {plural(cancelled, 'document')} cancelled; "
        f"{progress.done} done and {progress.failed} failed stay"
    )


def delete(job_id: Annotated[str, typer.Argument(help="Job id")]) -> None:
    """Delete a job, its documents and results (workers drop its late messages)."""
    from docqueue.producer.client import UnknownJob

    client = sql_client_or_exit(settings_or_exit())
    try:
        deleted = client.job(job_id).delete()
    except UnknownJob as exc:
        raise fail(str(exc)) from None
    print(f"job {job_id} deleted with its {plural(deleted, 'document')} and their results")


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
    jobs = plural(len(deleted), "finished or cancelled job")
    print(f"{jobs} older than {days:g} day{'' if days == 1 else 's'} deleted")
