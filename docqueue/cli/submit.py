"""``docqueue enqueue`` and ``docqueue resume``: a file queued as one job, and a job
whose documents were lost or whose enqueue stopped part way, completed."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from docqueue.cli.options import (
    CallbackOpt,
    IdFieldOpt,
    InputArg,
    JobNameOpt,
    LabelOpt,
    LabelsFileOpt,
    LabelsOpt,
    ParamOpt,
    TaskOpt,
    TextFieldOpt,
    client_or_exit,
    err,
    fail,
    parse_params,
    readable,
    settings_or_exit,
    warn,
)
from docqueue.errors import ExitCode
from docqueue.humanize import plural
from docqueue.jobspec import JobSpec


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
    from docqueue.formats.extras import MissingExtra
    from docqueue.formats.readers import (
        InputError,
        field_columns,
        input_digest,
        read_documents,
        resume_command,
    )
    from docqueue.params import InvalidParams
    from docqueue.producer.client import EnqueueStopped
    from docqueue.tasks import is_task, named_fields_problem

    if not model:
        raise fail("--model NAME is required")
    settings = settings_or_exit()
    client = client_or_exit(settings)
    job_id = uuid.uuid4().hex
    try:
        with readable(path) as file:
            columns = field_columns(text_field)
            if (
                columns is not None
                and is_task(task)
                and (problem := named_fields_problem(task, columns))
            ):
                raise fail(f"--text-field {text_field}: {problem}")
            documents = read_documents(file, text_field=text_field, id_field=id_field)
            params = parse_params(param, labels, label, labels_file)
            spec = JobSpec(
                task,
                model,
                params,
                source=None if file != path else str(path.absolute()),
                name=name,
                # what `docqueue resume` checks the file against, should this stop part way
                input_digest=input_digest(file, task, model, params, text_field, id_field),
                callback_url=callback_url,
                reuse=reuse,
            )
            job = client.enqueue(spec, documents, job_id=job_id)
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
    err.print(f"{plural(total - job.rejected, 'document')} queued{refused}", markup=False)
    problem = client.coverage(model, task).problem()
    if problem:  # a typo in the model name, or its workers are down: say so, still queue
        warn(f"{problem}; the documents wait in the queue until one starts")
    print(job.id)


def resume(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
) -> None:
    """Re-publish the documents SQL says are not done (after Redis lost its queue); a
    job whose enqueue stopped part way gets the rest of its file, read with the
    fields enqueue was given."""
    from docqueue.formats.readers import InputError, NoInput, rest_of_input, resume_command
    from docqueue.producer.client import EnqueueStopped, UnknownJob

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
    err.print(f"{plural(count, 'document')} re-published")
    print(count)
