"""``docqueue annotate``: a file end to end on this machine, one task or several in one
pass."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from docqueue.cli.options import (
    OUT_DEFAULT,
    OUTPUTS,
    CallbackOpt,
    IdFieldOpt,
    InputArg,
    LabelOpt,
    LabelsFileOpt,
    LabelsOpt,
    ParamOpt,
    ReuseOpt,
    TasksOpt,
    TextFieldOpt,
    err,
    fail,
    out_or_exit,
    parse_params,
    readable,
    settings_or_exit,
    start_logging,
)
from docqueue.config import Settings
from docqueue.errors import ExitCode, exit_now
from docqueue.humanize import per_second, plural


def annotate(
    path: InputArg,
    task: TasksOpt = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Local model directory, hub id, or minilm (bundled)"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help=f"Where to write results: {OUTPUTS} {OUT_DEFAULT}"),
    ] = None,
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
    from docqueue.annotate import AnnotateError, Stopped, annotate_tasks
    from docqueue.formats.extras import MissingExtra
    from docqueue.formats.readers import InputError
    from docqueue.params import InvalidParams

    start_logging("WARNING")
    out = out_or_exit(out)
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
    except Stopped as exc:  # Ctrl-C: not an error, a line saying what is saved
        err.print(str(exc), soft_wrap=True, markup=False)
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    except AnnotateError as exc:
        raise fail(str(exc), exc.code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", ExitCode.INTERRUPTED) from None
    progress = summary.progress
    rate = (progress.done + progress.failed) / max(summary.seconds, 1e-9)
    reused = f", {plural(progress.reused, 'result')} reused" if progress.reused else ""
    err.print(
        f"{progress.done} done, {progress.failed} failed of "
        f"{plural(progress.total or 0, 'document')} in "
        f"{summary.seconds:.1f}s ({per_second(rate)} docs/s including start-up){reused} -> {out}  "
        f"[{'job' if len(runs) == 1 else 'job group'} {summary.job_id}]",
        soft_wrap=True,
        markup=False,
    )
    for row in summary.errors:
        who = f"id {row['id']}" if row.get("id") is not None else f"document {row['seq']}"
        err.print(f"  {who}: {row['error']}", soft_wrap=True, markup=False)
    if progress.cancelled:
        err.print(f"  {plural(progress.cancelled, 'document')} cancelled", soft_wrap=True)
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
    from docqueue.annotate import TaskRun, model_label_for
    from docqueue.params import takes_param, validate_params
    from docqueue.tasks import canonical, is_task
    from docqueue.worker.models import ModelUnavailable, default_model, resolve_source

    parsed = []
    for spec in specs:
        name, _, spec_model = spec.partition(":")
        parsed.append((canonical(name) or name, spec_model or model))
    if len(parsed) > 1:
        for key in params:
            if not any(is_task(t) and takes_param(t, key) for t, _ in parsed):
                raise fail(f"--param {key}: none of the tasks takes it")
    runs = []
    for name, chosen in parsed:
        own = params
        if len(parsed) > 1 and is_task(name):
            own = {k: v for k, v in params.items() if takes_param(name, k)}
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
        runs.append(TaskRun(name, source, own, model_label_for(chosen or source)))
    return runs
