"""The FastAPI application: the routes, the token check, the errors, the limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI

from docqueue import __version__
from docqueue.api import (
    dead_letters,
    docs,
    documents,
    errors,
    groups,
    health,
    jobs,
    metrics,
    models,
    page,
    rerank,
    session,
    workers,
)
from docqueue.api.auth import require_token
from docqueue.api.limits import BodyLimit
from docqueue.api.openai import batches as openai_batches
from docqueue.api.openai import files as openai_files
from docqueue.api.openai import sync as openai_sync
from docqueue.api.origin import HostCheck
from docqueue.api.waiting import DoneNotices
from docqueue.config import Settings, redact
from docqueue.errors import one_line
from docqueue.producer.client import Client
from docqueue.tasks import load_modules
from docqueue.webhooks import SenderThread

log = logging.getLogger(__name__)

DESCRIPTION = """Queue documents for Hugging Face models and read their results.

Send `Authorization: Bearer <token>` (a token of `DOCQUEUE_API_TOKENS`) with every
request.  The live page at `/` logs in once (`POST /api/session`) and sends a signed
session cookie instead.  Errors are JSON, `{"error": {"message", "type", "param"}}`,
with a 4xx status.
"""


async def sweep_batches(client: Client, interval: float) -> None:
    """Expire the batches due (:meth:`docqueue.core.batches.Batches.expire_due`)
    every ``interval`` seconds until cancelled; a failure (the database down) is
    logged, and the next sweep tries again."""
    while True:
        await asyncio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(client.batches.expire_due)
        except Exception as exc:
            log.warning("expiring batches failed: %s", redact(one_line(exc)))


def create_app(settings: Settings, client: Client, close_client: bool = False) -> FastAPI:
    """The API over ``client`` (its caller closes it, unless ``close_client``: then
    the app does when it stops)."""
    load_modules(settings.task_modules)  # before any schema names the tasks

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One subscription wakes every request waiting for a result (?wait=).
        notices = app.state.notices = DoneNotices(client.redis, asyncio.get_running_loop())
        notices.start()
        # Deliveries of jobs cancelled here (or finished while no worker runs) go
        # out from here too; claims keep senders from sending one twice at once.
        sender = SenderThread(client.db, settings)
        sender.start()
        # Batches past their completion window expire though nobody reads them.
        sweeper = asyncio.create_task(sweep_batches(client, settings.api_batch_sweep_interval))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper  # a sweep under way ends first
            await anyio.to_thread.run_sync(sender.stop)
            await anyio.to_thread.run_sync(notices.stop)
            if close_client:
                client.close()

    app = FastAPI(
        title="docqueue",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # docs.install serves them: without a CDN, behind the token unless published
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.client = client
    app.state.submissions = documents.submitter(client)
    errors.install(app)
    app.add_middleware(
        BodyLimit,
        request_bytes=settings.api_max_request_bytes,
        upload_bytes=settings.api_max_upload_bytes,
    )
    app.add_middleware(HostCheck, configured=settings.api_hosts)
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
        rerank,
        metrics,
    ):
        app.include_router(
            module.router, dependencies=[Depends(require_token)], responses=errors.RESPONSES
        )
    app.include_router(session.router, responses=errors.RESPONSES)
    app.include_router(health.router)  # no token: load balancers and health checks
    page.install(app)
    docs.install(app, public=settings.api_public_docs or not settings.api_tokens)
    return app
