"""What the commands share: the option types, and the helpers that turn a problem
into one line on stderr and an exit code (:class:`docqueue.errors.ExitCode`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from docqueue.config import ConfiguredTaskModules, Settings, redact
from docqueue.errors import ExitCode, one_line
from docqueue.tasks import load_modules, task_list

if TYPE_CHECKING:
    from rich.table import Table

    from docqueue.logs import LogFormat

#: Where errors, warnings and summaries go; results and ids go to stdout.
err = Console(stderr=True, highlight=False)

# The operator's tasks join the catalogue before the commands' help lists the tasks.
load_modules(ConfiguredTaskModules().task_modules)
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
TextFieldOpt = Annotated[
    str,
    typer.Option(
        "--text-field",
        help="Field holding the text; or NAME=FIELD,... for tasks whose documents are "
        "named fields: question=q,context=passage (answer), query=q,passage=p (rerank)",
    ),
]
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
TasksOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--task",
        help=f"TASK or TASK:MODEL, once per task ({task_list()}): --task classify:minilm "
        "--task embed:minilm runs both in one pass, the results joined per document "
        "(default: classify)",
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
OUTPUTS = ".jsonl, .csv, .parquet, .hf (a Hugging Face dataset directory) or .labelstudio.json"
#: Where results go when --out is not given; a file there is never replaced unasked.
DEFAULT_OUT = Path("results.jsonl")
OUT_DEFAULT = f"(default: {DEFAULT_OUT}, where no file of that name exists)"


def out_or_exit(out: Path | None) -> Path:
    """``--out``, else results.jsonl where no such file exists: a file the user did
    not name is never overwritten."""
    if out is not None:
        return out
    if DEFAULT_OUT.exists():
        raise fail(
            f"{DEFAULT_OUT} exists and --out was not given: pass --out {DEFAULT_OUT} to "
            "replace it, or --out with another file name"
        )
    return DEFAULT_OUT


@contextmanager
def readable(path: Path) -> Iterator[Path]:
    """``path``, or for ``-`` a copy of standard input (removed afterwards)."""
    if str(path) != "-":
        yield path
        return
    from docqueue.formats.readers import stdin_copy

    with stdin_copy() as copy:
        yield copy


def fail(message: str, code: int = ExitCode.USAGE) -> typer.Exit:
    """Print ``message`` (never read as markup: it holds paths, ids and user text)."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    err.print(f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True)


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
            f"cannot reach the database or Redis: {error_line(exc)}", ExitCode.SERVICE
        ) from None


def error_line(exc: BaseException) -> str:
    """One line for a person, with any password in a URL hidden."""
    return redact(one_line(exc))


def sql_client_or_exit(settings: Settings) -> Any:
    """A Client for the commands that need only SQL (no Redis)."""
    from docqueue.core.services import missing_database
    from docqueue.producer.client import Client

    if missing := missing_database(settings):
        raise fail(
            f"no database at {missing}: run this where annotate ran (it keeps "
            "docqueue.db there), or set DOCQUEUE_DATABASE_URL"
        )
    try:
        return Client(settings)
    except Exception as exc:
        raise fail(f"cannot reach the database: {error_line(exc)}", ExitCode.SERVICE) from None


def print_table(table: Table, out: Console | None = None) -> None:
    """One line per row, however narrow the terminal (as docker ps does): squeezed
    into 80 columns (a pipe's width), ids, times and states would be folded."""
    from rich.measure import Measurement

    out = out or Console(highlight=False)
    natural = Measurement.get(out, out.options.update_width(10_000), table).maximum
    out.width = max(out.width, natural)
    out.print(table)


@contextmanager
def redis_errors() -> Iterator[None]:
    """A Redis that fails inside the block is one line and exit 3, not a traceback."""
    from redis.exceptions import RedisError

    try:
        yield
    except RedisError as exc:
        raise fail(f"Redis: {error_line(exc)}", ExitCode.SERVICE) from None


def start_logging(level: str, log_format: LogFormat = "text") -> None:
    """Log to stderr at ``level``, as text or JSON lines."""
    from docqueue.logs import setup_logging

    setup_logging(level, log_format)
