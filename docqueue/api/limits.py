"""Request size limits from the settings: a JSON body (held in memory while it is
read) up to ``api_max_request_bytes``, a multipart upload (spooled to disk) up to
``api_max_upload_bytes``.  Anything larger is refused with 413 and the limit
named, before the route runs when the client declares its length, else as soon as
the bytes received pass the limit.

Starlette has a body limit of its own, but it answers in plain text; every error of
this API is JSON.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from docqueue.api.errors import ApiError, error_response


class BodyLimit:
    def __init__(self, app: ASGIApp, *, request_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.request_bytes, self.upload_bytes = request_bytes, upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        upload = headers.get("content-type", "").lower().startswith("multipart/form-data")
        limit = self.upload_bytes if upload else self.request_bytes
        message = too_large(limit, upload)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await error_response(413, message)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    raise ApiError(413, message)
            return event

        await self.app(scope, counted, send)


def too_large(limit: int, upload: bool) -> str:
    what, setting = ("upload", "UPLOAD") if upload else ("request body", "REQUEST")
    return f"{what} over the limit of {limit:,} bytes (DOCQUEUE_API_MAX_{setting}_BYTES)"
