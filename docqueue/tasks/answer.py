"""``answer`` (alias ``question-answering``): the span of a context that answers a
question, by an extractive question-answering model (``...ForQuestionAnswering``),
chosen as transformers 4's question-answering pipeline chose it (transformers 5
has no such pipeline): ``answer``, its ``score`` and its ``start``/``end``
character offsets into the context.  A document is the pair ``{"question": ...,
"context": ...}``; a context longer than the window is read in windows that
overlap by ``doc_stride`` tokens, and the best span of any window wins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from docqueue.tasks.declaration import (
    QUESTION,
    QUESTION_ANSWERER,
    BatchEndpoint,
    OutputField,
    Params,
    PlainType,
    TaskDeclaration,
)


class AnswerParams(Params):
    #: Answers per document: the best is the row's ``answer``; with more than one,
    #: ``answers`` lists them, best first.
    top_k: int = Field(1, ge=1, le=100)
    #: Allow "no answer" (an empty ``answer``, ``start`` = ``end`` = 0), scored by
    #: the model's first token, as the pipeline does.
    handle_impossible_answer: bool = False
    #: The longest answer, in tokens.
    max_answer_len: int = Field(15, ge=1, le=10_000)
    #: Tokens of the model's window (question, context and special tokens); None:
    #: the model's window, at most 384, as the pipeline reads.
    max_seq_len: int | None = Field(None, ge=8, le=100_000)
    #: Context tokens two consecutive windows share; None: half the window, at
    #: most 128.
    doc_stride: int | None = Field(None, ge=0, le=100_000)
    #: Widen an answer to whole words (the pipeline's default).
    align_to_words: bool = True


ANSWER_FIELDS: tuple[tuple[str, PlainType], ...] = (
    ("answer", "string"),
    ("score", "float64"),
    ("start", "int64"),
    ("end", "int64"),
)


def _several(params: Mapping[str, Any]) -> bool:
    return int(params.get("top_k", 1)) > 1


TASK = TaskDeclaration(
    name="answer",
    summary="the span of a context that answers a question, by an extractive "
    "question-answering model",
    runners={QUESTION_ANSWERER: "docqueue.worker.runners.answer:AnswerRunner"},
    params=AnswerParams,
    outputs=(
        OutputField("answer", "string", written_back="text"),
        OutputField("score", "float64", written_back="number"),
        OutputField("start", "int64", written_back="number"),
        OutputField("end", "int64", written_back="number"),
        OutputField("answers", "records", written_back="json", when=_several, items=ANSWER_FIELDS),
    ),
    inputs=(QUESTION,),
    aliases=("question-answering",),
    default_model="distilbert/distilbert-base-cased-distilled-squad",
    batch=BatchEndpoint("docqueue.answer"),
)
