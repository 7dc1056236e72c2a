"""``summarize``: a summary of each document, by an encoder-decoder (BART, T5)."""

from __future__ import annotations

from pydantic import Field

from docqueue.tasks.declaration import (
    SEQ2SEQ,
    USAGE,
    BatchEndpoint,
    OutputField,
    TaskDeclaration,
)
from docqueue.tasks.generation import GenerationParams


class SummarizeParams(GenerationParams):
    num_beams: int = Field(1, ge=1, le=16)
    length_penalty: float = Field(1.0, ge=-10.0, le=10.0)
    no_repeat_ngram_size: int = Field(0, ge=0, le=16)


TASK = TaskDeclaration(
    name="summarize",
    summary="a summary of each document, by an encoder-decoder (BART, T5)",
    runners={SEQ2SEQ: "docqueue.worker.runners.summarize:SummarizeRunner"},
    params=SummarizeParams,
    outputs=(OutputField("summary_text", "string", written_back="text"), *USAGE),
    default_model="sshleifer/distilbart-cnn-12-6",
    batch=BatchEndpoint(
        "docqueue.summary",
        renamed={"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"},
    ),
)
