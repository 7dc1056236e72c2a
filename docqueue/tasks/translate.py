"""``translate`` (alias ``translation``): each document in another language, by an
encoder-decoder translation model, greedy (or beam search) as transformers 4's
translation pipeline generated.  Three ways models name languages:

* Marian (``Helsinki-NLP/opus-mt-en-de``): one model per pair, no codes needed; a
  model with several targets (``opus-mt-en-ROMANCE``) takes ``tgt_lang``, written
  as its ``>>fr<<`` token before the text;
* M2M100 and NLLB: ``src_lang`` and ``tgt_lang`` both needed (``en``, ``fr`` for
  M2M100; ``eng_Latn``, ``fra_Latn`` for NLLB): the source language's token leads
  the text, the target's is forced as the first token written;
* T5: the pair picks the prefix its config declares (``translate English to German:
  ``).

A document may be text, or ``{"text": ..., "source_lang": ..., "target_lang":
...}`` with languages of its own (each defaults to the job's).  A code the model
does not know is an error naming the codes it knows."""

from __future__ import annotations

from pydantic import Field

from docqueue.tasks.declaration import (
    LANGUAGES,
    SEQ2SEQ,
    TEXT,
    USAGE,
    BatchEndpoint,
    OutputField,
    TaskDeclaration,
)
from docqueue.tasks.generation import GenerationParams

#: A language code as models spell them (``en``, ``fra_Latn``, ``zh_CN``).
LanguageCode = Field(None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")


class TranslateParams(GenerationParams):
    max_new_tokens: int = Field(256, ge=1, le=8192)
    num_beams: int = Field(1, ge=1, le=16)
    #: The documents' language (each document may name its own).
    src_lang: str | None = LanguageCode
    #: The language to translate into (each document may name its own).
    tgt_lang: str | None = LanguageCode


TASK = TaskDeclaration(
    name="translate",
    summary="each document in another language, by an encoder-decoder translation model "
    "(Marian, M2M100, NLLB, T5)",
    runners={SEQ2SEQ: "docqueue.worker.runners.translate:TranslateRunner"},
    params=TranslateParams,
    outputs=(OutputField("translation_text", "string", written_back="text"), *USAGE),
    inputs=(TEXT, LANGUAGES),
    aliases=("translation",),
    default_model="Helsinki-NLP/opus-mt-en-de",
    batch=BatchEndpoint(
        "docqueue.translation",
        renamed={"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"},
    ),
)
