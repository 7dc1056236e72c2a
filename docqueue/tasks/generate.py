"""``generate``: text continuing a prompt, or a chat model's answer to messages, by a
causal language model (GPT-2, Llama)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from docqueue.tasks.declaration import CAUSAL_LM, CHAT, TEXT, USAGE, OutputField, TaskDeclaration
from docqueue.tasks.generation import GenerationParams


class GenerateParams(GenerationParams):
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


TASK = TaskDeclaration(
    name="generate",
    summary="text continuing a prompt, or a chat answer, by a causal language model",
    runners={CAUSAL_LM: "docqueue.worker.runners.generate:GenerateRunner"},
    params=GenerateParams,
    outputs=(OutputField("generated_text", "string", written_back="text"), *USAGE),
    inputs=(TEXT, CHAT),
    default_model="openai-community/gpt2",
    openai_endpoints=("/v1/chat/completions", "/v1/completions"),
)
