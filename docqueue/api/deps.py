"""What routes take from the request besides their body: the Client, the job a path
names, the Idempotency-Key header, how long to wait."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request

from docqueue.api.errors import ApiError
from docqueue.config import Settings
from docqueue.producer.client import Client, JobHandle, UnknownJob


async def get_client(request: Request) -> Client:  # async: no thread for a lookup
    client: Client = request.app.state.client
    return client


ClientDep = Annotated[Client, Depends(get_client)]

#: A creating call sent again with the same key returns what the first created.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Any unique string (a UUID): a retried request with the same key and "
        "the same body returns the job the first one created instead of creating another",
    ),
]

Wait = Annotated[
    float,
    Query(
        ge=0,
        description="Seconds to wait for the result (at most DOCQUEUE_API_MAX_WAIT); 0 "
        "answers at once",
    ),
]


def existing_job(job_id: str, client: ClientDep) -> JobHandle:
    """The job ``job_id`` names; 404 when there is none."""
    if len(job_id) > 32 or "\x00" in job_id:  # no job id can be: do not ask SQL
        raise UnknownJob(job_id[:40])
    return client.job(job_id)


JobDep = Annotated[JobHandle, Depends(existing_job)]


def checked_wait(request: Request, wait: float) -> float:
    settings: Settings = request.app.state.settings
    if wait > settings.api_max_wait:
        raise ApiError(
            422,
            f"wait: at most {settings.api_max_wait:g} seconds (DOCQUEUE_API_MAX_WAIT); poll "
            "GET /api/documents/{job_id} to wait longer",
            "wait",
        )
    return wait


def request_digest(kind: str, body: Any) -> str:
    """A digest of a request's meaning, to tell a retry from another request that
    reuses its idempotency key."""
    return digester(kind, body).hexdigest()


def digester(kind: str, body: Any) -> Any:
    """A sha256 fed with the request's kind and body (canonical JSON); an upload
    feeds its file after."""
    # ASCII: a lone surrogate (which JSON can carry) must not break the digest
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{kind}\n{canonical}\n".encode())
