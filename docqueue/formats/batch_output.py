"""A batch's output and error files, made from its job's results in OpenAI's
formats: one JSON line per request, ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``.

The output file holds the requests that succeeded, each with the body the
synchronous endpoint would answer (an embedding list, a ``chat.completion``, a
``text_completion``, or docqueue's classification and summary objects), built by
:mod:`docqueue.formats.openai_bodies` as the synchronous endpoints build theirs: with
the tokens the worker counted and why generation stopped.

The error file holds the rest: a line refused before it ran (its message names
the line) answers 400, a document the model failed on 500, and a line of a
cancelled or expired batch has no response and the error ``batch_cancelled`` or
``batch_expired``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from docqueue.formats.openai_bodies import line_body

if TYPE_CHECKING:
    from docqueue.db.files import BatchInfo

#: Bytes :func:`in_chunks` joins lines into.
CHUNK = 64 * 1024


def request_ids(job_id: str, seq: int) -> tuple[str, str]:
    return f"batch_req_{job_id}_{seq}", f"req_{job_id}_{seq}"


def output_lines(
    rows: Iterator[dict[str, Any]], batch: BatchInfo, model: str, created: int
) -> Iterator[str]:
    shape = line_body(batch.endpoint)
    for row in rows:
        if row["status"] == "done":
            line_id, request_id = request_ids(batch.job(), row["seq"])
            body = shape(row, model, created, batch.options, line_id)
            response = {"status_code": 200, "request_id": request_id, "body": body}
            yield _line(line_id, row["id"], response, None)


def error_lines(rows: Iterator[dict[str, Any]], batch: BatchInfo) -> Iterator[str]:
    for row in rows:
        line_id, request_id = request_ids(batch.job(), row["seq"])
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


def in_chunks(lines: Iterable[str]) -> Iterator[bytes]:
    """Lines joined into chunks of about :data:`CHUNK` bytes: a response pulls each
    chunk from a worker thread, so one line at a time would be slow."""
    buffer: list[str] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= CHUNK:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()
