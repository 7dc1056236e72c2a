"""A batch's output and error files, made from its job's results in OpenAI's
formats: one JSON line per request, ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``.

The output file holds the requests that succeeded, each with the body the
synchronous endpoint would answer (an embedding list, a ``chat.completion``, a
``text_completion``, or docqueue's classification and summary objects).  docqueue
does not count tokens, so ``usage`` is all zeros, and it does not report why
generation stopped, so ``finish_reason`` is always ``stop``.

The error file holds the rest: a line refused before it ran (its message names
the line) answers 400, a document the model failed on 500, and a line of a
cancelled or expired batch has no response and the error ``batch_cancelled`` or
``batch_expired``.
"""

from __future__ import annotations

import array
import base64
import json
from collections.abc import Iterator
from typing import Any

from docqueue.db.files import BatchInfo


def request_ids(job_id: str, seq: int) -> tuple[str, str]:
    return f"batch_req_{job_id}_{seq}", f"req_{job_id}_{seq}"


def output_lines(
    rows: Iterator[dict[str, Any]], batch: BatchInfo, model: str, created: int
) -> Iterator[str]:
    for row in rows:
        if row["status"] == "done":
            line_id, request_id = request_ids(batch.job_id, row["seq"])
            body = BODIES[batch.endpoint](row, model, created, batch.options, line_id)
            response = {"status_code": 200, "request_id": request_id, "body": body}
            yield _line(line_id, row["id"], response, None)


def error_lines(rows: Iterator[dict[str, Any]], batch: BatchInfo) -> Iterator[str]:
    for row in rows:
        line_id, request_id = request_ids(batch.job_id, row["seq"])
        if row["status"] == "failed":
            yield _line(line_id, row["id"], _failure(row["error"] or "failed", request_id), None)
        elif row["status"] != "done":  # cancelled, or pending in an expired batch
            code = "batch_expired" if batch.expired_at is not None else "batch_cancelled"
            message = (
                "the request was not run before the batch expired"
                if code == "batch_expired"
                else "the request was not run: the batch was cancelled"
            )
            yield _line(line_id, row["id"], None, {"code": code, "message": message})


def _failure(message: str, request_id: str) -> dict[str, Any]:
    refused = message.startswith("line ")
    error = {
        "message": message,
        "type": "invalid_request_error" if refused else "server_error",
        "param": None,
        "code": None,
    }
    return {
        "status_code": 400 if refused else 500,
        "request_id": request_id,
        "body": {"error": error},
    }


def _line(line_id: str, custom_id: Any, response: Any, error: Any) -> str:
    line = {"id": line_id, "custom_id": custom_id, "response": response, "error": error}
    return json.dumps(line, ensure_ascii=False) + "\n"


# --- response bodies ----------------------------------------------------------------

NO_TOKENS = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _embedding(row: dict[str, Any], model: str, _: int, options: dict[str, Any], _id: str) -> Any:
    vector: Any = row["embedding"]
    if options.get("encoding_format") == "base64":
        packed = array.array("f", vector)
        if packed.itemsize != 4:  # pragma: no cover - every platform docqueue runs on
            raise RuntimeError("float is not 32-bit here")
        vector = base64.b64encode(_little_endian(packed)).decode()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": vector}],
        "model": model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


def _little_endian(packed: array.array[float]) -> bytes:
    import sys

    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def _chat(row: dict[str, Any], model: str, created: int, _: dict[str, Any], line_id: str) -> Any:
    message = {"role": "assistant", "content": row["generated_text"], "refusal": None}
    return {
        "id": f"chatcmpl-{line_id.removeprefix('batch_req_')}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": NO_TOKENS,
    }


def _completion(
    row: dict[str, Any], model: str, created: int, _: dict[str, Any], line_id: str
) -> Any:
    choice = {"index": 0, "text": row["generated_text"], "finish_reason": "stop", "logprobs": None}
    return {
        "id": f"cmpl-{line_id.removeprefix('batch_req_')}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": NO_TOKENS,
    }


def _docqueue(kind: str, fields: tuple[str, ...]) -> Any:
    def body(row: dict[str, Any], model: str, created: int, _: dict[str, Any], _id: str) -> Any:
        out = {k: row[k] for k in fields if k in row}
        return {"object": kind, "created": created, "model": model, **out}

    return body


BODIES: dict[str, Any] = {
    "/v1/embeddings": _embedding,
    "/v1/chat/completions": _chat,
    "/v1/completions": _completion,
    "/v1/docqueue/classify": _docqueue(
        "docqueue.classification", ("label", "score", "scores", "similarities", "truncated")
    ),
    "/v1/docqueue/summarize": _docqueue("docqueue.summary", ("summary_text", "truncated")),
}
