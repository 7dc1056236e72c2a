"""The FastAPI application: the routes, the token check, the errors, the limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI

from docqueue import __version__
from docqueue.api import (
    dead_letters,
    documents,
    errors,
    groups,
    jobs,
    models,
    openai_batches,
    openai_files,
    openai_sync,
)
from docqueue.api.auth import require_token
from docqueue.api.limits import BodyLimit
from docqueue.config import Settings
from docqueue.producer.client import Client

DESCRIPTION = """Queue documents for Hugging Face models and read their results.

Send `Authorization: Bearer <token>` (a token of `DOCQUEUE_API_TOKENS`) with every
request.  Errors are JSON, `{"error": {"message", "type", "param"}}`, with a 4xx status.
"""


def create_app(settings: Settings, client: Client) -> FastAPI:
    """The API over ``client`` (its caller closes it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.waiters = anyio.CapacityLimiter(documents.MAX_WAITING)
        yield

    app = FastAPI(title="docqueue", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.client = client
    errors.install(app)
    app.add_middleware(
        BodyLimit,
        request_bytes=settings.api_max_request_bytes,
        upload_bytes=settings.api_max_upload_bytes,
    )
    for module in (
        jobs,
        groups,
        documents,
        models,
        dead_letters,
        openai_files,
        openai_batches,
        openai_sync,
    ):
        app.include_router(
            module.router, dependencies=[Depends(require_token)], responses=errors.RESPONSES
        )
    return app
