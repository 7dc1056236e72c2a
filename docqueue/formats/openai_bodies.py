"""OpenAI's response bodies, built from docqueue result rows: the one place that
shapes them, for the synchronous endpoints (:mod:`docqueue.api.openai.sync`) and
for each line of a batch's output file (:mod:`docqueue.formats.batch_output`), so
the two answer the same request with the same body.

The shapes follow the official ``openai`` package's types (``CreateEmbeddingResponse``,
``Completion``, ``ChatCompletion``).

``usage`` and ``finish_reason`` come from what the worker recorded with each
result (``prompt_tokens``, ``completion_tokens``, ``finish_reason``).  A result
stored before docqueue recorded them has no counts: its ``usage`` is null
(embeddings: zeros, since OpenAI's SDKs require the field) and its
``finish_reason`` stop.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from docqueue.formats.batch_lines import task_of
from docqueue.tasks import USAGE, declared

Row = dict[str, Any]


class _Out(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


# --- the bodies ------------------------------------------------------------------------


class EmbeddingOut(_Out):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    """The vector: numbers, or base64 of little-endian float32 (encoding_format)."""


class EmbeddingUsage(_Out):
    prompt_tokens: int
    """The tokens the model read (after truncation to its context)."""
    total_tokens: int


class EmbeddingsResponse(_Out):
    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingUsage


FinishReason = Literal["stop", "length"]


class CompletionUsage(_Out):
    prompt_tokens: int
    """The tokens the model read: the prompt (or chat template) after truncation."""
    completion_tokens: int
    """The tokens it generated, an end-of-text token included."""
    total_tokens: int


class CompletionChoice(_Out):
    index: int
    text: str
    finish_reason: FinishReason
    """length: max_tokens were generated; stop: the model ended, or a stop string."""
    logprobs: None = None


class CompletionResponse(_Out):
    id: str
    """cmpl-<job id of the first prompt>; each prompt is a docqueue job of its own."""
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None
    """Summed over the choices; null only for results stored before docqueue
    counted tokens."""


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(_Out):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    """length: max_tokens were generated; stop: the model ended, or a stop string."""
    logprobs: None = None


class ChatCompletionResponse(_Out):
    id: str
    """chatcmpl-<job id>: GET /api/documents/<job id> reads the same result."""
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage | None
    """null only for a result stored before docqueue counted tokens."""


# --- building them from result rows --------------------------------------------------


def embeddings(rows: Sequence[Row], model: str, encoding: str) -> EmbeddingsResponse:
    """One embedding per row, in order, as floats or base64 (``encoding``)."""
    data = [
        EmbeddingOut(index=i, embedding=encoded(row["embedding"], encoding))
        for i, row in enumerate(rows)
    ]
    tokens = sum(int(row.get("prompt_tokens") or 0) for row in rows)
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingsResponse(data=data, model=model, usage=usage)


def completion(
    response_id: str, created: int, model: str, rows: Sequence[Row]
) -> CompletionResponse:
    """A ``text_completion`` with one choice per row."""
    choices = [
        CompletionChoice(index=i, text=str(row["generated_text"]), finish_reason=finish(row))
        for i, row in enumerate(rows)
    ]
    return CompletionResponse(
        id=response_id, created=created, model=model, choices=choices, usage=usage(rows)
    )


def chat_completion(response_id: str, created: int, model: str, row: Row) -> ChatCompletionResponse:
    """A ``chat.completion`` with the row's text as the assistant's message."""
    message = AssistantMessage(content=str(row["generated_text"]))
    choice = ChatChoice(index=0, message=message, finish_reason=finish(row))
    return ChatCompletionResponse(
        id=response_id, created=created, model=model, choices=[choice], usage=usage([row])
    )


def usage(rows: Sequence[Row]) -> CompletionUsage | None:
    """The tokens read and generated, summed over ``rows``; None when a row has no
    counts (stored before docqueue recorded them)."""
    if any(
        row.get("prompt_tokens") is None or row.get("completion_tokens") is None for row in rows
    ):
        return None
    read = sum(int(row["prompt_tokens"]) for row in rows)
    written = sum(int(row["completion_tokens"]) for row in rows)
    return CompletionUsage(
        prompt_tokens=read, completion_tokens=written, total_tokens=read + written
    )


def finish(row: Row) -> Any:
    return "length" if row.get("finish_reason") == "length" else "stop"


def encoded(vector: list[float], encoding: str) -> list[float] | str:
    """The vector as floats, or as base64 of little-endian float32 (what OpenAI's
    SDKs decode)."""
    if encoding == "float":
        return vector
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


# --- one line of a batch's output file --------------------------------------------

#: ``(row, model, created, options, line_id)`` to the response body of a batch line.
LineBody = Callable[[Row, str, int, dict[str, Any], str], dict[str, Any]]


def _embedding_line(row: Row, model: str, _: int, options: dict[str, Any], _id: str) -> Any:
    body = embeddings([row], model, options.get("encoding_format", "float"))
    return body.model_dump(mode="json")


def _chat_line(row: Row, model: str, created: int, _: dict[str, Any], line_id: str) -> Any:
    response_id = f"chatcmpl-{line_id.removeprefix('batch_req_')}"
    return chat_completion(response_id, created, model, row).model_dump(mode="json")


def _completion_line(row: Row, model: str, created: int, _: dict[str, Any], line_id: str) -> Any:
    response_id = f"cmpl-{line_id.removeprefix('batch_req_')}"
    return completion(response_id, created, model, [row]).model_dump(mode="json")


def _docqueue(kind: str, fields: tuple[str, ...], counted: bool = False) -> LineBody:
    """docqueue's own bodies (classification, summary): the row's output fields, and
    for a summary the usage and finish_reason a completion has."""

    def body(row: Row, model: str, created: int, _: dict[str, Any], _id: str) -> Any:
        out = {k: row[k] for k in fields if k in row}
        if counted:
            found = usage([row])
            out["finish_reason"] = finish(row)
            out["usage"] = None if found is None else found.model_dump(mode="json")
        return {"object": kind, "created": created, "model": model, **out}

    return body


#: The response body of a batch line of each of OpenAI's endpoints.
OPENAI_LINE_BODIES: dict[str, LineBody] = {
    "/v1/embeddings": _embedding_line,
    "/v1/chat/completions": _chat_line,
    "/v1/completions": _completion_line,
}


def line_body(endpoint: str) -> LineBody:
    """The response body of one batch line, by the batch's endpoint: OpenAI's, or
    the body a task declares for ``/v1/docqueue/<task>`` (its output fields, and a
    generating task's usage)."""
    if endpoint in OPENAI_LINE_BODIES:
        return OPENAI_LINE_BODIES[endpoint]
    task = declared(task_of(endpoint))
    declared_endpoint = task.batch_endpoint
    assert declared_endpoint is not None, endpoint  # an endpoint endpoints() lists
    usage_names = {f.name for f in USAGE}
    fields = tuple(f.name for f in task.outputs if f.name not in usage_names)
    counted = any(f.name in usage_names for f in task.outputs)
    return _docqueue(declared_endpoint.object, (*fields, "truncated"), counted=counted)
