"""Per-task parameters: validated when a job is submitted, and again by the worker
that receives it (a message may come from anyone who can reach Redis).  Each task
declares its parameters (``TaskDeclaration.params``, :mod:`docqueue.tasks`).

Out-of-range values raise :class:`InvalidParams` with one line per problem.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from docqueue.errors import Refused
from docqueue.tasks import UnknownTask, declared
from docqueue.tasks.classify import ClassifyParams as ClassifyParams
from docqueue.tasks.embed import EmbedParams as EmbedParams
from docqueue.tasks.generate import GenerateParams as GenerateParams
from docqueue.tasks.generation import MAX_NEW_TOKENS_LIMIT as MAX_NEW_TOKENS_LIMIT
from docqueue.tasks.summarize import SummarizeParams as SummarizeParams


class InvalidParams(Refused, ValueError):
    """Parameters a task does not accept."""

    param = "params"


def validate_params(
    task: str, params: dict[str, Any] | None, *, max_new_tokens_cap: int | None = None
) -> dict[str, Any]:
    """Validated, complete parameters for ``task`` (defaults filled in), as plain data."""
    try:
        params_class = declared(task).params
    except UnknownTask as exc:
        raise InvalidParams(str(exc)) from None
    try:
        parsed = params_class.model_validate(params or {})
    except ValidationError as exc:
        raise InvalidParams(_describe(task, exc)) from None
    cap = max_new_tokens_cap
    max_new = getattr(parsed, "max_new_tokens", None)
    if cap is not None and max_new is not None and max_new > cap:
        raise InvalidParams(f"{task}: max_new_tokens={max_new} exceeds the cap of {cap} tokens")
    return parsed.model_dump(mode="json")


def takes_param(task: str, name: str) -> bool:
    """Whether ``task`` has a parameter called ``name``."""
    return name in declared(task).params.model_fields


def _describe(task: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "params"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "not a parameter of this task"
        problems.append(f"{task}: {where}: {message}")
    return "; ".join(problems)
