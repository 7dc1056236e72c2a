"""The task catalogue: the tasks docqueue runs, each declared in a module of its own
(:mod:`docqueue.tasks.classify`, ...; see :mod:`docqueue.tasks.declaration`), and
what follows from the declarations.

Everything that names tasks (the wire schema, parameter validation, the CLI's help,
export columns and types, schedule write-back, the API's schemas and batch-line
endpoints, the runners a worker builds for a model) asks this module.  A task of
the operator's own joins the catalogue from a module named in
``DOCQUEUE_TASK_MODULES`` (a module with a ``TASK`` declaration), loaded by each
entry point with :func:`load_modules`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from docqueue.errors import Refused
from docqueue.tasks import (
    answer,
    classify,
    embed,
    fill_mask,
    generate,
    ner,
    rerank,
    summarize,
    translate,
)
from docqueue.tasks.declaration import (
    CAUSAL_LM,
    CHAT,
    CLASSIFIER,
    CROSS_ENCODER,
    ENCODER,
    LANGUAGES,
    MASKED_LM,
    NLI,
    PAIR,
    QUESTION,
    QUESTION_ANSWERER,
    SEQ2SEQ,
    TEXT,
    TOKEN_CLASSIFIER,
    USAGE,
    BatchEndpoint,
    FamiliesOnly,
    Family,
    FieldKind,
    InputShape,
    OutputField,
    Params,
    TaskDeclaration,
)

_CATALOGUE: dict[str, TaskDeclaration] = {}
_ALIASES: dict[str, str] = {}


class UnknownTask(Refused, ValueError):
    """A task name the catalogue does not hold."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown task {name!r}; expected {task_list()}")
        self.name = name


def register(declaration: TaskDeclaration) -> None:
    """Add a task to the catalogue (again: nothing happens); a name or alias that
    another task holds is refused."""
    if _CATALOGUE.get(declaration.name) is declaration:
        return
    for name in (declaration.name, *declaration.aliases):
        if name in _CATALOGUE or name in _ALIASES:
            raise ValueError(f"task {declaration.name}: the name {name!r} is taken")
    _CATALOGUE[declaration.name] = declaration
    _ALIASES.update((alias, declaration.name) for alias in declaration.aliases)


def load_modules(names: Iterable[str]) -> None:
    """Import each module and register its ``TASK`` (the operator's own tasks)."""
    for name in names:
        module = importlib.import_module(name)
        declaration = getattr(module, "TASK", None)
        if not isinstance(declaration, TaskDeclaration):
            raise ValueError(f"task module {name}: no TASK = TaskDeclaration(...) in it")
        register(declaration)


for _builtin in (classify, summarize, generate, embed, ner, fill_mask, rerank, answer, translate):
    register(_builtin.TASK)


def canonical(name: str) -> str | None:
    """The task a name or alias stands for; None when none."""
    if name in _CATALOGUE:
        return name
    return _ALIASES.get(name)


def declared(name: str) -> TaskDeclaration:
    """The declaration of a task (by name or alias); raises :class:`UnknownTask`."""
    task = canonical(name)
    if task is None:
        raise UnknownTask(name)
    return _CATALOGUE[task]


def names() -> tuple[str, ...]:
    """Every task's name, in the catalogue's order."""
    return tuple(_CATALOGUE)


def every() -> tuple[TaskDeclaration, ...]:
    return tuple(_CATALOGUE.values())


def is_task(name: str) -> bool:
    return canonical(name) is not None


def task_list(conjunction: str = "or") -> str:
    """``classify, summarize, generate or embed``, for help texts and messages."""
    every_name = names()
    return f"{', '.join(every_name[:-1])} {conjunction} {every_name[-1]}"


def tasks_of(family: Family) -> tuple[str, ...]:
    """The tasks a model of this family serves, in the order of the families'
    preference (a bare encoder embeds first, then classifies zero-shot)."""
    found = [d for d in every() if family in d.runners]
    found.sort(key=lambda d: list(d.runners).index(family) > 0)
    return tuple(d.name for d in found)


def takes_text(task: str) -> bool:
    """Whether a task's documents may be plain text (an unknown task's may)."""
    name = canonical(task)
    return name is None or TEXT in _CATALOGUE[name].inputs


def takes_chat(task: str) -> bool:
    """Whether a task's documents may be chat messages instead of text (an unknown
    task's may not)."""
    name = canonical(task)
    return name is not None and CHAT in _CATALOGUE[name].inputs


def fields_of(task: str) -> InputShape | None:
    """The input shape of named fields a task's documents may be (a query and a
    passage), or None (an unknown task's, or one that takes text or chat)."""
    name = canonical(task)
    if name is None:
        return None
    return next((shape for shape in _CATALOGUE[name].inputs if shape.structured), None)


def named_fields_problem(task: str, names: Iterable[str]) -> str | None:
    """Why documents of these named fields cannot be ``task``'s (it takes text, or
    other fields), or None."""
    shape = fields_of(task)
    if shape is None:
        return f"{task} takes text, not fields"
    allowed = (*shape.fields, *shape.optional)
    given = list(names)
    if unknown := [name for name in given if name not in allowed]:
        return f"no field {unknown[0]!r}; {task} takes {', '.join(allowed)}"
    if missing := [name for name in shape.fields if name not in given]:
        return f"{missing[0]!r} is missing; {task} takes {', '.join(allowed)}"
    return None


def written_back(task: str) -> tuple[tuple[str, FieldKind], ...]:
    """The fields of a task's result that a schedule writes back to the user's table,
    one column each: the write-back table's columns and the check that a source's
    key column is not named like one of them both read it."""
    return tuple((f.name, f.written_back) for f in declared(task).outputs if f.written_back)


def cannot_do(model: str, task: str, tasks: Iterable[str]) -> str:
    """One line for a model asked for a task it does not do."""
    can = sorted(set(tasks))
    does = f"{', '.join(can[:-1])} and {can[-1]}" if len(can) > 1 else "".join(can) or "nothing"
    return f"model {model} cannot {task}; it can do: {does}"


def _checked_name(name: str) -> str:
    task = canonical(name)
    if task is None:  # worded as pydantic words a choice it refuses
        every_name = [repr(n) for n in names()]
        expected = f"{', '.join(every_name[:-1])} or {every_name[-1]}"
        raise PydanticCustomError(
            "literal_error", "Input should be {expected}", {"expected": expected}
        )
    return task


class _TaskEnum:
    """The JSON schema of a task name: the catalogue's names when the schema is made
    (after the entry point loaded the operator's task modules)."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "enum": list(names())}

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.str_schema(strict=True)


#: A task name in a message or a request: a task of the catalogue (an alias is
#: read as its task's name).
Task = Annotated[str, _TaskEnum, AfterValidator(_checked_name)]

#: JSON schema types of the Parquet types a result field is declared with.
_JSON_TYPES: dict[str | None, dict[str, Any]] = {
    "string": {"type": "string"},
    "float64": {"type": "number"},
    "int32": {"type": "integer"},
    "int64": {"type": "integer"},
    "bool": {"type": "boolean"},
    "struct": {"type": "object", "additionalProperties": {"type": "number"}},
    "vector": {"type": "array", "items": {"type": "number"}},
}


def _json_type(field: OutputField) -> dict[str, Any]:
    if field.parquet == "records":
        properties = {name: _JSON_TYPES[kind] for name, kind in field.items}
        return {"type": "array", "items": {"type": "object", "properties": properties}}
    return _JSON_TYPES.get(field.parquet, {})


class _ParamsSchema:
    """The JSON schema of a request's task parameters: one of the tasks'
    parameter schemas (which one, the request's ``task`` says)."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        found = handler(schema)
        found["anyOf"] = [
            {**d.params.model_json_schema(), "title": f"{d.name} parameters"} for d in every()
        ]
        return found


class _RowSchema:
    """The JSON schema of a result row: id, seq, status, the output fields every
    task declares (a row has its own task's), error and the flags."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        found = handler(schema)
        outputs = {f.name: f for d in every() for f in d.outputs}
        found["properties"] = {
            "id": {"type": ["string", "null"]},
            "seq": {"type": "integer"},
            "status": {"enum": ["pending", "done", "failed", "cancelled"]},
            **{name: _json_type(f) for name, f in outputs.items()},
            "error": {"type": "string"},
            "truncated": {"type": "boolean"},
            "duplicate_id": {"type": "boolean"},
        }
        return found


#: Task parameters in a request (validated by the task's ``params`` when submitted).
ParamsIn = Annotated[dict[str, Any], _ParamsSchema]
#: A result row in a response.
ResultRow = Annotated[dict[str, Any], _RowSchema]

__all__ = [
    "CAUSAL_LM",
    "CHAT",
    "CLASSIFIER",
    "CROSS_ENCODER",
    "ENCODER",
    "LANGUAGES",
    "MASKED_LM",
    "NLI",
    "PAIR",
    "QUESTION",
    "QUESTION_ANSWERER",
    "SEQ2SEQ",
    "TEXT",
    "TOKEN_CLASSIFIER",
    "USAGE",
    "BatchEndpoint",
    "FamiliesOnly",
    "Family",
    "FieldKind",
    "InputShape",
    "OutputField",
    "Params",
    "ParamsIn",
    "ResultRow",
    "Task",
    "TaskDeclaration",
    "UnknownTask",
    "cannot_do",
    "canonical",
    "declared",
    "every",
    "is_task",
    "load_modules",
    "named_fields_problem",
    "names",
    "register",
    "takes_chat",
    "takes_text",
    "fields_of",
    "task_list",
    "tasks_of",
    "written_back",
]
