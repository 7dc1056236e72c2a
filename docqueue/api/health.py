"""``GET /health``: whether this API process can serve (its database and Redis
answer).  No token: load balancers and container health checks call it, and it
says nothing about jobs."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from docqueue.api.deps import ClientDep
from docqueue.api.errors import ErrorOut, error_response
from docqueue.health import problem

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    summary="Whether this process can serve: its database and Redis answer",
    responses={503: {"model": ErrorOut, "description": "The database or Redis is unreachable"}},
)
def health(client: ClientDep) -> JSONResponse:
    found = problem(client)
    if found is not None:
        return error_response(503, found)
    return JSONResponse({"status": "ok"})
