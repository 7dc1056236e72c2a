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
    health,
    jobs,
    metrics,
    models,
    openai_batches,
    openai_files,
    openai_sync,
    page,
    session,
    workers,
)
from docqueue.api.auth import require_token
from docqueue.api.limits import BodyLimit
from docqueue.config import Settings
from docqueue.producer.client import Client
from docqueue.webhooks import SenderThread

DESCRIPTION = """Queue documents for Hugging Face models and read their results.

Send `Authorization: Bearer <token>` (a token of `DOCQUEUE_API_TOKENS`) with every
request.  The live page at `/` logs in once (`POST /api/session`) and sends a signed
session cookie instead.  Errors are JSON, `{"error": {"message", "type", "param"}}`,
with a 4xx status.
"""


def create_app(settings: Settings, client: Client, close_client: bool = False) -> FastAPI:
    """The API over ``client`` (its caller closes it, unless ``close_client``: then
    the app does when it stops)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.waiters = anyio.CapacityLimiter(documents.MAX_WAITING)
        # Deliveries of jobs cancelled here (or finished while no worker runs) go
        # out from here too; claims keep senders from sending one twice at once.
        sender = SenderThread(client.db, settings)
        sender.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(sender.stop)
            if close_client:
                client.close()

    app = FastAPI(title="docqueue", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.client = client
    app.state.submissions = documents.submitter(client)
    errors.install(app)
    app.add_middleware(
        BodyLimit,
        request_bytes=settings.api_max_request_bytes,
        upload_bytes=settings.api_max_upload_bytes,
    )
    app.state.metrics_registry, counters = metrics.api_registry(client)
    app.add_middleware(metrics.RequestMetrics, counters=counters)
    for module in (
        jobs,
        groups,
        documents,
        models,
        workers,
        dead_letters,
        openai_files,
        openai_batches,
        openai_sync,
        metrics,
    ):
        app.include_router(
            module.router, dependencies=[Depends(require_token)], responses=errors.RESPONSES
        )
    app.include_router(session.router, responses=errors.RESPONSES)
    app.include_router(health.router)  # no token: load balancers and health checks
    page.install(app)
    return app
