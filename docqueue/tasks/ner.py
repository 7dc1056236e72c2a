"""``ner`` (alias ``token-classification``): the entities of each document, by a
token-classification model, as ``pipeline("token-classification")`` finds them:
each with its label (``entity`` per token, or ``entity_group`` once tokens are
grouped), ``score``, ``word`` and ``start``/``end`` character offsets into the
document.  A document longer than the model's window is read in overlapping
windows and their entities merged, never cut."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

from docqueue.tasks.declaration import (
    TOKEN_CLASSIFIER,
    BatchEndpoint,
    OutputField,
    Params,
    PlainType,
    TaskDeclaration,
)

#: How tokens become entities, as the pipeline's ``aggregation_strategy``: ``none``
#: one entity per token; ``simple`` adjacent tokens of one entity grouped; ``first``,
#: ``average``, ``max`` each word takes one label (its first token's, its tokens'
#: averaged scores', its most confident token's) before grouping.
Aggregation = Literal["none", "simple", "first", "average", "max"]


class NerParams(Params):
    #: How tokens are grouped into entities (the pipeline's default is ``none``;
    #: grouped spans are what an annotator reviews).
    aggregation_strategy: Aggregation = "simple"
    #: Labels left out of the result (by ``entity`` or ``entity_group``).
    ignore_labels: tuple[Annotated[str, Field(min_length=1, max_length=100)], ...] = Field(
        ("O",), max_length=256
    )
    #: Tokens two consecutive windows share when a document is longer than the
    #: model's window; None: a quarter of the window.
    stride: int | None = Field(None, ge=0, le=100_000)


ENTITY_FIELDS: tuple[tuple[str, PlainType], ...] = (
    ("entity_group", "string"),
    ("entity", "string"),
    ("score", "float64"),
    ("word", "string"),
    ("start", "int64"),
    ("end", "int64"),
    ("index", "int64"),
)


def label_studio(row: Mapping[str, Any], text: str) -> list[dict[str, Any]] | None:
    """One ``labels`` span per entity, from the control ``label`` to the object
    ``text`` (``<Labels name="label" toName="text">``), with its score."""
    entities = row.get("entities")
    if entities is None:
        return None
    results = []
    for number, entity in enumerate(entities):
        start, end = entity.get("start"), entity.get("end")
        if start is None or end is None:
            continue
        label = entity.get("entity_group") or entity.get("entity")
        results.append(
            {
                "id": f"e{number}",
                "from_name": "label",
                "to_name": "text",
                "type": "labels",
                "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]},
                "score": entity.get("score"),
            }
        )
    return results


TASK = TaskDeclaration(
    name="ner",
    summary="named entities (or any token labels) with character offsets, by a "
    "token-classification model",
    runners={TOKEN_CLASSIFIER: "docqueue.worker.runners.ner:NerRunner"},
    params=NerParams,
    outputs=(OutputField("entities", "records", written_back="json", items=ENTITY_FIELDS),),
    aliases=("token-classification",),
    default_model="dslim/bert-base-NER",
    label_studio=label_studio,
    batch=BatchEndpoint("docqueue.entities"),
)
