"""Per-task parameters: validated when a job is submitted, and again by the worker
that receives it (a message may come from anyone who can reach Redis).

Out-of-range values raise :class:`InvalidParams` with one line per problem.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from docqueue.tasks import task_list

#: Hard ceiling whatever a worker allows; a worker's own cap is usually lower.
MAX_NEW_TOKENS_LIMIT = 8192


class InvalidParams(ValueError):
    """Parameters a task does not accept."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Label = Annotated[str, Field(min_length=1, max_length=100)]


class ClassifyParams(_Params):
    #: Zero-shot labels for an embedding model: label -> text compared with each
    #: document (the label itself, or a short description).  None: the model's own
    #: classification head.
    labels: dict[Label, Annotated[str, Field(min_length=1, max_length=500)]] | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_from_list(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            names = [str(v).strip() for v in value]
            if len(set(names)) != len(names):
                raise ValueError("labels must be distinct")
            return {name: name for name in names}
        return value

    @field_validator("labels")
    @classmethod
    def _enough_labels(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and not 2 <= len(value) <= 256:
            raise ValueError("zero-shot classification needs between 2 and 256 labels")
        return value


class _GenerationParams(_Params):
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    min_new_tokens: int = Field(0, ge=0, le=MAX_NEW_TOKENS_LIMIT)

    @model_validator(mode="after")
    def _min_below_max(self) -> _GenerationParams:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens "
                f"({self.max_new_tokens})"
            )
        return self


class SummarizeParams(_GenerationParams):
    num_beams: int = Field(1, ge=1, le=16)
    length_penalty: float = Field(1.0, ge=-10.0, le=10.0)
    no_repeat_ngram_size: int = Field(0, ge=0, le=16)


class GenerateParams(_GenerationParams):
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0, le=10_000)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    #: Generation stops at the first of these strings; it is not part of the output.
    stop: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = Field((), max_length=8)
    #: Include the prompt in generated_text.
    return_full_text: bool = False
    #: Seeded sampling: the document runs in a batch of its own, so the same document
    #: with the same seed gives the same text whatever else is queued.
    seed: int | None = Field(None, ge=0, le=2**32 - 1)


class EmbedParams(_Params):
    pass


PARAMS: dict[str, type[_Params]] = {
    "classify": ClassifyParams,
    "summarize": SummarizeParams,
    "generate": GenerateParams,
    "embed": EmbedParams,
}


def validate_params(
    task: str, params: dict[str, Any] | None, *, max_new_tokens_cap: int | None = None
) -> dict[str, Any]:
    """Validated, complete parameters for ``task`` (defaults filled in), as plain data."""
    params_class = PARAMS.get(task)
    if params_class is None:
        raise InvalidParams(f"unknown task {task!r}; expected {task_list()}")
    try:
        parsed = params_class.model_validate(params or {})
    except ValidationError as exc:
        raise InvalidParams(_describe(task, exc)) from None
    cap = max_new_tokens_cap
    max_new = getattr(parsed, "max_new_tokens", None)
    if cap is not None and max_new is not None and max_new > cap:
        raise InvalidParams(f"{task}: max_new_tokens={max_new} exceeds the cap of {cap} tokens")
    return parsed.model_dump(mode="json")


def _describe(task: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "params"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "not a parameter of this task"
        problems.append(f"{task}: {where}: {message}")
    return "; ".join(problems)
