"""How the API reports errors: a 4xx status and a JSON body whose one-line message
names the problem (the field, the limit, the model), the same shape everywhere:

    {"error": {"message": "params: classify: labels: ...", "type": "invalid_request",
               "param": "params"}}

Each docqueue exception the routes can meet has its status here; anything else is a
bug and stays a 500.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from docqueue.config import redact
from docqueue.core.errors import DatabaseUnavailable, EnqueueStopped, NothingQueued
from docqueue.errors import DocqueueError, Kind, Unavailable, one_line

#: The error's ``type``, by status.
KINDS = {
    400: "invalid_request",
    401: "authentication",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
    504: "timeout",
}


#: The status of each kind of docqueue error (:mod:`docqueue.errors`).
STATUS: dict[Kind, int] = {"refused": 422, "not_found": 404, "conflict": 409, "unavailable": 503}


class ErrorDetail(BaseModel):
    #: One line naming the problem.
    message: str
    #: invalid_request, authentication, not_found, too_large, unavailable, ...
    type: str
    #: The field, parameter or header at fault, when there is one.
    param: str | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


class ApiError(HTTPException):
    """A request the API refuses, with the field at fault.  An HTTPException, so that
    it also passes through FastAPI's reading of the body (a body over its limit)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, detail=message, headers=headers)
        self.param = param


def nothing_queued(exc: EnqueueStopped) -> ApiError:
    """The 503 for a request whose job was deleted after a service failed part way
    (the exception's own message says how to resume a job that is now gone)."""
    return ApiError(503, one_line(NothingQueued(exc)))


def error_response(
    status: int, message: str, param: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    detail = ErrorDetail(message=message, type=KINDS.get(status, "error"), param=param)
    return JSONResponse(
        ErrorOut(error=detail).model_dump(mode="json"), status_code=status, headers=headers
    )


#: The error responses every route documents (FastAPI's own 422 schema is replaced).
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "A missing or wrong bearer token"},
    403: {
        "model": ErrorOut,
        "description": "A change sent with the page's session cookie but without its header",
    },
    422: {"model": ErrorOut, "description": "Input that cannot be run, named in the message"},
}


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One line for pydantic's errors: the most specific one (the deepest field),
    and how many more there are; and the field's dotted name."""
    first = max(errors, key=lambda e: len(e["loc"]))
    loc = list(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "json_invalid":
        message = f"malformed JSON ({first.get('ctx', {}).get('error', 'invalid')})"
        if loc[:1] == ["body"] and len(loc) == 2 and isinstance(loc[1], int):
            # FastAPI's, for a body that is not JSON: loc is ("body", character).
            return f"body: {message[:-1]} at character {loc[1]})", None
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    where = ".".join(str(part) for part in loc) or None
    more = len(errors) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where or 'body'}: {message}{suffix}", where


def install(app: FastAPI) -> None:
    """Register the handlers that turn refusals into JSON errors."""

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        message = str(exc.detail)
        if not isinstance(exc, ApiError) and exc.status_code in (404, 405):  # the router's
            message = f"{message}: {request.method} {request.url.path}"
        return error_response(exc.status_code, message, getattr(exc, "param", None), exc.headers)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, where = validation_message(exc.errors())
        return error_response(422, message, where)

    def refused(status: int, param: str | None = None) -> Any:
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            return error_response(status, one_line(exc), param)

        return handler

    def unavailable(service: str) -> Any:
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            return error_response(503, f"{service} is unavailable: {redact(one_line(exc))}")

        return handler

    async def docqueue_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DocqueueError)
        if isinstance(exc, Unavailable) and not str(exc).startswith(exc.service):
            return await unavailable(exc.service)(request, exc)
        return error_response(STATUS[exc.kind], one_line(exc), exc.param)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(DocqueueError, docqueue_error)
    app.add_exception_handler(ClientDisconnect, refused(400))
    app.add_exception_handler(RedisConnectionError, unavailable("Redis"))
    app.add_exception_handler(RedisTimeout, unavailable("Redis"))
    app.add_exception_handler(DatabaseUnavailable, unavailable("the database"))
