"""What a task is, declared once: its name and aliases, the model families that can
do it and the runner each uses, the documents it takes, its parameters and the
fields of its result.  Everything else (CSV columns, Parquet types, schedule
write-back columns, Label Studio predictions, the API's schemas, batch-line
endpoints, the CLI's help, the runners a worker builds) is derived from these
declarations by :mod:`docqueue.tasks`.

A declaration holds no code that needs torch: a runner is named as
``"module:Class"`` and imported by the worker alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

#: Model families, as :func:`docqueue.worker.models.family_of` tells them apart.
Family = str
CLASSIFIER: Family = "classifier"
#: A sequence classifier trained on NLI: an ``entailment`` label in its id2label.
NLI: Family = "nli"
#: A sequence classifier with a single output: a cross-encoder scoring a query and
#: a passage read together (ms-marco MiniLM, bge-reranker).
CROSS_ENCODER: Family = "cross-encoder"
#: A token-classification head (NER, part of speech).
TOKEN_CLASSIFIER: Family = "token-classifier"
#: An extractive question-answering head (start and end logits per token).
QUESTION_ANSWERER: Family = "question-answerer"
#: An encoder with its masked-language-model head (BERT, RoBERTa checkpoints).
MASKED_LM: Family = "masked-lm"
ENCODER: Family = "encoder"
SEQ2SEQ: Family = "seq2seq"
CAUSAL_LM: Family = "causal-lm"

#: What a written-back field holds, and so its SQL column: a short text (a label),
#: any text, a number, or a JSON value (a list or mapping).
FieldKind = Literal["short_text", "text", "number", "json"]

#: A field's Parquet type: a plain type, ``struct`` (a mapping of names to floats,
#: its names from the first row that has it), ``vector`` (float32s, their count from
#: the first row), ``records`` (a list of structs whose fields ``OutputField.items``
#: declares: entities, predictions), or None (inferred from the first rows, among
#: the input's columns).
ParquetType = Literal["string", "float64", "int32", "int64", "bool", "struct", "vector", "records"]
#: The plain types a ``records`` field's items may have.
PlainType = Literal["string", "float64", "int32", "int64", "bool"]


class Params(BaseModel):
    """A task's parameters: validated when a job is submitted, and again by the
    worker that receives it (a message may come from anyone who can reach Redis)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Parameters added to a task after its first release: left out of the
    #: validated parameters while they hold their default, so a job that does not
    #: use them keeps the canonical parameters it had (its reuse digest, its batch
    #: cohort), and a worker of the earlier release still takes its messages.
    added_later: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_unused_later_params(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            fields = type(self).model_fields
            for name in self.added_later:
                if name in data and getattr(self, name) == fields[name].default:
                    del data[name]
        return data


@dataclass(frozen=True)
class InputShape:
    """What one document of a task is: plain text, chat messages, or an object of
    named text fields (``fields`` required, ``optional`` may be left out)."""

    name: str
    fields: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    @property
    def structured(self) -> bool:
        return bool(self.fields)


TEXT = InputShape("text")
CHAT = InputShape("chat")
#: A query and a passage, scored together (reranking).
PAIR = InputShape("pair", ("query", "passage"))
#: A question and the context its answer is found in.
QUESTION = InputShape("question", ("question", "context"))
#: A text with its own source and target languages (each defaults to the job's).
LANGUAGES = InputShape("text-with-languages", ("text",), ("source_lang", "target_lang"))


@dataclass(frozen=True)
class OutputField:
    """One field of a task's result row."""

    name: str
    #: Its Parquet type (see :data:`ParquetType`).
    parquet: ParquetType | None = None
    #: Its write-back column's kind; None: a schedule does not write it back.
    written_back: FieldKind | None = None
    #: Present only for some parameters (None: always).
    when: Callable[[Mapping[str, Any]], bool] | None = None
    #: For ``records``: each item's fields and their types, in order (an item may
    #: lack a field: null there).
    items: tuple[tuple[str, PlainType], ...] = ()

    def present(self, params: Mapping[str, Any] | None) -> bool:
        return self.when is None or self.when(params or {})


#: What generation records besides its text (OpenAI's usage and finish_reason).
USAGE = (
    OutputField("prompt_tokens"),
    OutputField("completion_tokens"),
    OutputField("finish_reason"),
)

#: A Label Studio prediction's results for one result row and its document's text
#: (None: no prediction).
LabelStudio = Callable[[Mapping[str, Any], str], list[dict[str, Any]] | None]


@dataclass(frozen=True)
class FamiliesOnly:
    """A parameter only some of a task's families take (zero-shot ``labels``: an NLI
    or embedding model, not a classifier with its own head): refused at submit when
    every live worker of the model is of another family, and by the worker's runner.
    ``why`` is the refusal's line, with ``{model}`` for the model's name."""

    families: tuple[Family, ...]
    why: str


@dataclass(frozen=True)
class BatchEndpoint:
    """A task's docqueue batch-line endpoint (``/v1/docqueue/<task>``): the response
    object's name, and body fields named otherwise than the parameter they set."""

    object: str
    renamed: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskDeclaration:
    """One task: see the module's docstring."""

    name: str
    #: One line for help texts.
    summary: str
    #: Each family that can do the task, with its runner (``"module:Class"``), in
    #: order of preference (the first is the family a default model has).
    runners: Mapping[Family, str]
    params: type[Params]
    outputs: tuple[OutputField, ...]
    #: The documents it takes (the first is what a record's text becomes).
    inputs: tuple[InputShape, ...] = (TEXT,)
    aliases: tuple[str, ...] = ()
    #: The hub model ``docqueue annotate`` uses when none is named.
    default_model: str | None = None
    #: How a done row becomes a Label Studio prediction (None: no Label Studio export).
    label_studio: LabelStudio | None = None
    #: Its ``/v1/docqueue/<task>`` batch-line endpoint; None: the default one (its
    #: response object ``docqueue.<task>``), unless OpenAI's own endpoints carry the
    #: task (``openai_endpoints``).
    batch: BatchEndpoint | None = None
    #: OpenAI endpoints whose lines run this task (their bodies are OpenAI's shapes,
    #: read by the API).
    openai_endpoints: tuple[str, ...] = ()
    #: Parameters only some families take, by name (see :class:`FamiliesOnly`); a
    #: parameter counts as given when it is truthy.
    only_for: Mapping[str, FamiliesOnly] = field(default_factory=dict)

    def refusal(self, family: Family, params: Mapping[str, Any], model: str) -> str | None:
        """Why a model of ``family`` cannot run this task with ``params`` (None: it can)."""
        for name, only in self.only_for.items():
            if params.get(name) and family not in only.families:
                return only.why.format(model=model)
        return None

    @property
    def batch_endpoint(self) -> BatchEndpoint | None:
        """Its ``/v1/docqueue/<task>`` endpoint, if it has one."""
        if self.batch is None and not self.openai_endpoints:
            return BatchEndpoint(f"docqueue.{self.name}")
        return self.batch

    @property
    def families(self) -> tuple[Family, ...]:
        return tuple(self.runners)

    def fields(self, params: Mapping[str, Any] | None = None) -> list[OutputField]:
        """The result's fields for these parameters, in column order."""
        return [f for f in self.outputs if f.present(params)]

    def takes(self, shape: InputShape) -> bool:
        return shape in self.inputs
