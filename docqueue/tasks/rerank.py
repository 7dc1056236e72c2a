"""``rerank``: how well a passage answers a query, by a cross-encoder that reads the
two together (a sequence classifier with one output, as ms-marco and bge rerankers
are); the score is the sigmoid of its logit, in [0, 1], as sentence-transformers'
``CrossEncoder`` and TEI give it.  A document is the pair: ``{"query": ...,
"passage": ...}``; ``POST /v1/rerank`` sends one per passage and sorts them."""

from __future__ import annotations

from docqueue.tasks.declaration import (
    CROSS_ENCODER,
    PAIR,
    OutputField,
    Params,
    TaskDeclaration,
)


class RerankParams(Params):
    pass


TASK = TaskDeclaration(
    name="rerank",
    summary="how well a passage answers a query (a score in [0, 1]), by a cross-encoder",
    runners={CROSS_ENCODER: "docqueue.worker.runners.rerank:CrossEncoderRunner"},
    params=RerankParams,
    outputs=(
        OutputField("score", "float64", written_back="number"),
        OutputField("prompt_tokens"),
    ),
    inputs=(PAIR,),
    aliases=("text-ranking",),
)
