"""The schedules file: a TOML file declaring what to annotate, when, from where, and
into which table.  Parsed into pydantic models, so a mistake is refused at start
with the schedule and the field it concerns.

    [beat]
    lease_seconds = 30          # how long a silent beat keeps the lead

    [[schedule]]
    name = "tickets"
    every = "1h"                # or cron = "0 * * * *"
    task = "classify"
    model = "minilm"
    params = { labels = ["billing", "outage", "praise"] }
    source = { url = "postgresql://app@db/app", table = "tickets",
               key = "id", watermark = "updated_at", text = "body" }
    into = { table = "ticket_labels" }
"""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from docqueue.errors import Refused
from docqueue.schedules.columns import output_columns
from docqueue.tasks import canonical, fields_of, named_fields_problem, takes_text, task_list

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
#: A SQL identifier docqueue will quote and use: a table or a column.
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ScheduleError(Refused, ValueError):
    """The schedules file cannot be used; the message names the schedule and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def database_url(url: SecretStr | None) -> SecretStr | None:
    """Refuse, at load, a URL SQLAlchemy cannot use (its driver included), without
    repeating it: it may hold a password."""
    from docqueue.db.engine import url_problem

    if url is None:
        return None
    if problem := url_problem(url.get_secret_value()):
        raise ValueError(problem)
    return url


class TaskSpec(_Strict):
    """One annotation a schedule makes of each new document."""

    task: str
    model: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        """The task's name (an alias is read as the task it stands for)."""
        name = canonical(task)
        if name is None:
            raise ValueError(f"unknown task {task!r}; use {task_list()}")
        return name


#: A task's named fields, each from a column (a table) or a field (files):
#: ``fields = { question = "title", context = "body" }``.
SourceFields = dict[str, str]


def fields_problem(task: str, fields: SourceFields | None, where: str) -> str | None:
    """Why a source's documents (text, or ``fields``) cannot be ``task``'s, or None."""
    shape = fields_of(task)
    if fields is None:
        if takes_text(task):
            return None
        assert shape is not None
        return (
            f"{task} takes an object of fields ({', '.join(shape.fields)}), not a text "
            f"{where}: name them with source.fields = {{ {shape.fields[0]} = ..., ... }}"
        )
    if shape is None:
        return f"{task} takes text: give source.text, not source.fields"
    problem = named_fields_problem(task, fields)
    return None if problem is None else f"source.fields: {problem}"


class DirectorySource(_Strict):
    """Files in a directory: each new or changed file is read whole."""

    kind: Literal["directory"] = "directory"
    directory: Path
    pattern: str = "*.jsonl"
    text_field: str = "text"
    #: Documents of named fields instead of text: each name from a field of a line
    #: (a column of a CSV or Parquet file).
    fields: SourceFields | None = None
    id_field: str | None = "id"

    def text_spec(self) -> str:
        """What :func:`~docqueue.formats.readers.read_documents` reads as the text."""
        if self.fields is None:
            return self.text_field
        return ",".join(f"{name}={field}" for name, field in self.fields.items())


class TableSource(_Strict):
    """New rows of a table (or a query) in the user's database, by a watermark column
    and the row key together: rows sharing a watermark value are never skipped."""

    kind: Literal["table"] = "table"
    url: SecretStr
    table: str | None = Field(None, pattern=IDENTIFIER)
    query: str | None = None
    key: str = Field(pattern=IDENTIFIER)
    watermark: str = Field(pattern=IDENTIFIER)
    text: str | None = Field(None, pattern=IDENTIFIER)
    #: Documents of named fields instead of text, each from a column.
    fields: dict[str, Annotated[str, Field(pattern=IDENTIFIER)]] | None = None
    #: Most rows one run takes (the next run takes the rest).
    limit: int = Field(10_000, ge=1)

    _url = field_validator("url")(database_url)

    @model_validator(mode="after")
    def _one_of_table_or_query(self) -> TableSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("name either a table or a query")
        if (self.text is None) == (self.fields is None):
            raise ValueError("name either text (a column) or fields (a column each)")
        return self

    def columns(self) -> list[str]:
        """The columns a document is read from: its text, or each field's."""
        return [self.text] if self.text is not None else list((self.fields or {}).values())


class WriteBack(_Strict):
    """The table results are upserted into, by the source row's key."""

    #: None: the source's database for a table source, docqueue's for a directory.
    url: SecretStr | None = None
    table: str = Field(pattern=IDENTIFIER)

    _url = field_validator("url")(database_url)


class Schedule(_Strict):
    name: str = Field(pattern=NAME)
    every: float | None = None
    cron: str | None = None
    tasks: list[TaskSpec]
    source: DirectorySource | TableSource = Field(discriminator="kind")
    into: WriteBack
    #: Copy the result of a document whose text, task, model fingerprint and parameters
    #: were computed before (an unchanged row), instead of computing it again.
    reuse: bool = True
    #: Longest a run waits for its jobs before it counts as failed.
    timeout: float = Field(3600.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        """``task``/``model``/``params`` for one task; ``every = "1h"``; a source's kind
        from its fields."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "task" in data or "model" in data:
            if "tasks" in data:
                raise ValueError("give either task/model/params or tasks, not both")
            one = {k: data.pop(k) for k in ("task", "model", "params") if k in data}
            data["tasks"] = [one]
        if isinstance(data.get("every"), str):
            data["every"] = parse_duration(data["every"])
        source = data.get("source")
        if isinstance(source, dict) and "kind" not in source:
            data["source"] = {**source, "kind": "directory" if "directory" in source else "table"}
        return data

    @model_validator(mode="after")
    def _when(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give either every (an interval) or cron (five fields)")
        if self.every is not None and self.every <= 0:
            raise ValueError("every must be a positive interval")
        if self.cron is not None:
            cron_fields(self.cron)
        if not self.tasks:
            raise ValueError("name at least one task")
        return self

    @model_validator(mode="after")
    def _tasks_read_the_sources_documents(self) -> Schedule:
        where = "column" if isinstance(self.source, TableSource) else "field"
        for spec in self.tasks:
            if problem := fields_problem(spec.task, self.source.fields, where):
                raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _key_is_not_an_output(self) -> Schedule:
        """A key column named like a column the results fill would be overwritten by
        each result (every row keyed by its label): refused before anything runs."""
        key = self.key_column()
        outputs = output_columns(self.tasks)
        if key.lower() in (name.lower() for name in outputs):
            raise ValueError(
                f"source.key {key!r} is also the name of a column the results are written "
                f"to ({', '.join(outputs)}), so each result would overwrite its row's key; "
                f'read the key under another name: query = "SELECT {key} AS source_{key}, '
                f'...", key = "source_{key}"'
            )
        return self

    def key_column(self) -> str:
        """The write-back table's key column: the source's key, or ``key`` for files."""
        return self.source.key if isinstance(self.source, TableSource) else "key"

    def interval(self) -> timedelta | None:
        return None if self.every is None else timedelta(seconds=self.every)


class BeatSettings(_Strict):
    #: A beat that has not renewed its lead for this long loses it to another; a run
    #: not heard from for this long is taken as abandoned and finished by the next.
    lease_seconds: float = Field(30.0, ge=1)


class SchedulesFile(_Strict):
    beat: BeatSettings = Field(default_factory=BeatSettings)
    schedule: list[Schedule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> SchedulesFile:
        names = [s.name for s in self.schedule]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"schedule names must be unique: {', '.join(twice)}")
        return self

    def get(self, name: str) -> Schedule:
        for schedule in self.schedule:
            if schedule.name == name:
                return schedule
        known = ", ".join(s.name for s in self.schedule) or "none"
        raise ScheduleError(f"no schedule named {name!r} (the file has: {known})")


def parse_duration(value: str) -> float:
    """``90``, ``"90s"``, ``"5m"``, ``"1h"``, ``"1d"`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
    if not match:
        raise ValueError(f"every {value!r}: use seconds or a number with s, m, h or d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def cron_fields(expression: str) -> list[str]:
    """The five fields of a cron expression (minute hour day month weekday)."""
    from celery.schedules import crontab

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expression!r}: needs five fields (minute hour day month weekday)")
    try:
        crontab(*fields[:2], day_of_month=fields[2], month_of_year=fields[3], day_of_week=fields[4])
    except ValueError as exc:
        raise ValueError(f"cron {expression!r}: {exc}") from None
    return fields


def load(path: str | Path) -> SchedulesFile:
    """Read and check a schedules file; raises :class:`ScheduleError`."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScheduleError(f"{path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScheduleError(f"{path}: not TOML: {exc}") from None
    try:
        return SchedulesFile.model_validate(raw)
    except ValidationError as exc:
        raise ScheduleError(f"{path}: {_first_problem(exc, raw)}") from None


def _first_problem(exc: ValidationError, raw: dict[str, Any]) -> str:
    error = exc.errors()[0]
    where = list(error["loc"])
    prefix = ""
    if len(where) >= 2 and where[0] == "schedule" and isinstance(where[1], int):
        entries = raw.get("schedule") or []
        entry = entries[where[1]] if where[1] < len(entries) else {}
        name = entry.get("name") if isinstance(entry, dict) else None
        prefix = f"schedule {name!r}" if name else f"schedule #{where[1] + 1}"
        where = where[2:]
    # A discriminated union adds its tag after "source": not a field the user wrote.
    parts_of_field = [
        str(part)
        for i, part in enumerate(where)
        if not (i and where[i - 1] == "source" and part in ("directory", "table"))
    ]
    field = ".".join(parts_of_field)
    message = str(error["msg"]).removeprefix("Value error, ")
    parts = [p for p in (prefix, field) if p]
    return f"{' '.join(parts)}: {message}" if parts else message
