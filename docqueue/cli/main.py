"""The ``docqueue`` application: the commands of each module registered in the order
``docqueue --help`` lists them, and :func:`main`, which turns anything unforeseen into
one line and exit 3."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from rich.markup import escape

from docqueue.cli.annotate import annotate
from docqueue.cli.bench import bench
from docqueue.cli.dead_letters import dead_letters_app
from docqueue.cli.jobs import cancel, delete, export, jobs, prune, status
from docqueue.cli.options import err, error_line
from docqueue.cli.schedules import schedule_app
from docqueue.cli.serve import health, serve
from docqueue.cli.submit import enqueue, resume
from docqueue.cli.worker import worker
from docqueue.errors import DocqueueError, ExitCode, exit_code

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


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


#: The commands in the order ``docqueue --help`` lists them (the groups follow them).
COMMANDS: tuple[Callable[..., None], ...] = (
    annotate,
    worker,
    enqueue,
    status,
    export,
    resume,
    jobs,
    cancel,
    delete,
    prune,
    health,
    serve,
    bench,
)
for command in COMMANDS:
    app.command()(command)
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(schedule_app, name="schedule")


def unwrap_help(typer_app: typer.Typer) -> None:
    """Commands' docstrings as paragraphs of one line each: rich keeps a docstring's
    line breaks, which cut sentences in the middle inside its boxes."""
    import inspect

    for info in typer_app.registered_commands:
        text = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if text:
            info.help = "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            unwrap_help(group.typer_instance)


unwrap_help(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(ExitCode.INTERRUPTED)
    except DocqueueError as exc:  # a refusal, a missing job, a service down: its kind's code
        err.print(f"[bold red]error:[/] {escape(error_line(exc))}", soft_wrap=True)
        sys.exit(exit_code(exc))
    except Exception as exc:  # the last resort: one line, not a traceback
        if os.environ.get("DOCQUEUE_DEBUG"):
            raise
        err.print(
            f"[bold red]error:[/] {type(exc).__name__}: {escape(error_line(exc))}", soft_wrap=True
        )
        err.print("(set DOCQUEUE_DEBUG=1 for the traceback)")
        sys.exit(ExitCode.SERVICE)
