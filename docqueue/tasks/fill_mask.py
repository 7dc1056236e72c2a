"""``fill-mask``: the likeliest tokens for the mask token in each document (``[MASK]``
for BERT, ``<mask>`` for RoBERTa), by a masked language model, as
``pipeline("fill-mask")`` gives them: ``score``, ``token``, ``token_str`` and the
``sequence`` with the mask filled in.  A document without the model's mask token is
an error row that names it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from docqueue.tasks.declaration import (
    MASKED_LM,
    BatchEndpoint,
    OutputField,
    Params,
    PlainType,
    TaskDeclaration,
)


class FillMaskParams(Params):
    #: Predictions per mask token (at most the number of ``targets`` when given).
    top_k: int = Field(5, ge=1, le=100)
    #: Score only these tokens (a word the vocabulary lacks stands for its first
    #: token, as in the pipeline).  None: the whole vocabulary.
    targets: tuple[Annotated[str, Field(min_length=1, max_length=100)], ...] | None = Field(
        None, min_length=1, max_length=1000
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _one_target(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


PREDICTION_FIELDS: tuple[tuple[str, PlainType], ...] = (
    ("mask", "int32"),
    ("score", "float64"),
    ("token", "int64"),
    ("token_str", "string"),
    ("sequence", "string"),
)

TASK = TaskDeclaration(
    name="fill-mask",
    summary="the likeliest tokens for the mask token in each document, by a masked language model",
    runners={MASKED_LM: "docqueue.worker.runners.fill_mask:FillMaskRunner"},
    params=FillMaskParams,
    outputs=(
        OutputField("token_str", "string", written_back="short_text"),
        OutputField("score", "float64", written_back="number"),
        OutputField("sequence", "string", written_back="text"),
        OutputField("predictions", "records", written_back="json", items=PREDICTION_FIELDS),
    ),
    default_model="distilbert/distilbert-base-uncased",
    batch=BatchEndpoint("docqueue.fill_mask"),
)
