"""OpenAI's response bodies, built from docqueue result rows: the one place that
shapes them, for the synchronous endpoints (:mod:`docqueue.api.openai_sync`) and
for each line of a batch's output file (:mod:`docqueue.api.batch_output`), so
the two answer the same request with the same body.

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
from typing import Any

from docqueue.api.openai_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionResponse,
    CompletionUsage,
    EmbeddingOut,
    EmbeddingsResponse,
    EmbeddingUsage,
)

Row = dict[str, Any]


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


#: The response body of one batch line, by the batch's endpoint.
LINE_BODIES: dict[str, LineBody] = {
    "/v1/embeddings": _embedding_line,
    "/v1/chat/completions": _chat_line,
    "/v1/completions": _completion_line,
    "/v1/docqueue/classify": _docqueue(
        "docqueue.classification", ("label", "score", "scores", "similarities", "truncated")
    ),
    "/v1/docqueue/summarize": _docqueue(
        "docqueue.summary", ("summary_text", "truncated"), counted=True
    ),
}
