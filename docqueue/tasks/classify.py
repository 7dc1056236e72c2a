"""``classify``: a label per document, from a model's classification head, or zero
shot against the labels a job names: an NLI model (an ``entailment`` label in its
id2label) judges whether each document entails a hypothesis made of each label, as
``pipeline("zero-shot-classification")`` does; an embedding model compares each
document with each label's text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, WithJsonSchema, field_validator

from docqueue.tasks.declaration import (
    CLASSIFIER,
    ENCODER,
    MASKED_LM,
    NLI,
    BatchEndpoint,
    FamiliesOnly,
    OutputField,
    Params,
    TaskDeclaration,
)

Label = Annotated[str, Field(min_length=1, max_length=100)]
#: Labels as a request may give them: names, or names with the text each stands for.
LABELS_SCHEMA = {
    "anyOf": [
        {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 100}},
        {
            "type": "object",
            "propertyNames": {"minLength": 1, "maxLength": 100},
            "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 500},
        },
        {"type": "null"},
    ],
    "description": "Zero-shot labels: names, or name -> the text compared with each document "
    "(an NLI model: the text put in the hypothesis template)",
}
#: The pipeline's hypothesis template for NLI zero-shot classification.
HYPOTHESIS_TEMPLATE = "This example is {}."


class ClassifyParams(Params):
    #: Zero-shot labels for an embedding model: label -> text compared with each
    #: document (the label itself, or a short description).  None: the model's own
    #: classification head.
    labels: Annotated[
        dict[Label, Annotated[str, Field(min_length=1, max_length=500)]] | None,
        WithJsonSchema(LABELS_SCHEMA),
    ] = None

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

    #: NLI zero-shot: the hypothesis each label's text is put in (``{}`` once).
    hypothesis_template: str = Field(HYPOTHESIS_TEMPLATE, min_length=2, max_length=500)
    #: NLI zero-shot: judge each label on its own (entailment against contradiction)
    #: instead of sharing one probability among the labels.
    multi_label: bool = False

    added_later = ("hypothesis_template", "multi_label")

    @field_validator("hypothesis_template")
    @classmethod
    def _one_slot(cls, value: str) -> str:
        # Filled by replacing the one "{}": never str.format on a caller's string.
        rest = value.replace("{}", "")
        if value.count("{}") != 1 or "{" in rest or "}" in rest:
            raise ValueError('the hypothesis template needs "{}" exactly once, and no other braces')
        return value


def _zero_shot(params: Mapping[str, Any]) -> bool:
    return bool(params.get("labels"))


def label_studio(row: Mapping[str, Any], text: str) -> list[dict[str, Any]] | None:
    """A ``choices`` result from the control ``label`` to the object ``text``
    (``<Choices name="label" toName="text">``)."""
    if row.get("label") is None:
        return None
    return [
        {
            "from_name": "label",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": [row["label"]]},
        }
    ]


TASK = TaskDeclaration(
    name="classify",
    summary="a label and every label's score, from the model's head or zero-shot --labels",
    runners={
        CLASSIFIER: "docqueue.worker.runners.classify:ClassifyRunner",
        NLI: "docqueue.worker.runners.nli:NliRunner",
        ENCODER: "docqueue.worker.runners.embed:ZeroShotRunner",
        MASKED_LM: "docqueue.worker.runners.embed:ZeroShotRunner",
    },
    params=ClassifyParams,
    outputs=(
        OutputField("label", "string", written_back="short_text"),
        OutputField("score", "float64", written_back="number"),
        OutputField("scores", "struct", written_back="json"),
        OutputField("similarities", "struct", when=_zero_shot),
    ),
    default_model="distilbert/distilbert-base-uncased-finetuned-sst-2-english",
    label_studio=label_studio,
    batch=BatchEndpoint("docqueue.classification"),
    only_for={
        "labels": FamiliesOnly(
            (NLI, ENCODER, MASKED_LM),
            "model {model} is a classifier with its own labels, neither an NLI model (an "
            "entailment label) nor an embedding model: zero-shot labels need one of those",
        )
    },
)
