"""Workers: what each heartbeat row says (device, models, batches, padded tokens,
memory), and whether it is live, by the rule the rest of docqueue uses."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from docqueue.api.deps import ClientDep
from docqueue.api.schemas import _Out
from docqueue.config import Settings
from docqueue.core.fleet import WorkerState

router = APIRouter(prefix="/api", tags=["workers"])


class WorkerOut(_Out):
    id: str
    hostname: str
    device: str
    models: dict[str, Any]
    """Each model it serves, with its source and the tasks it does."""
    alive: bool
    """It beat within DOCQUEUE_HEARTBEAT_TIMEOUT and did not say it stopped."""
    stopped: bool
    """Its last heartbeat said it was stopping."""
    last_seen: float
    """Its last heartbeat (epoch seconds)."""
    seconds_since_heartbeat: float
    documents: int
    """Documents it computed since it started."""
    batches: int
    """Batches it ran since it started."""
    mean_batch_size: float | None
    """documents / batches (None before its first batch)."""
    padded_tokens: int
    """Tokens its batches held, padding included (the cost a batch is cut by)."""
    peak_host_bytes: int | None
    """Peak resident memory of its process."""
    peak_gpu_bytes: int | None
    """Peak GPU memory torch allocated (None on CPU)."""

    @classmethod
    def of(cls, state: WorkerState, now: float, timeout: float) -> WorkerOut:
        return cls(
            id=state.id,
            hostname=state.hostname,
            device=state.device,
            models=state.models,
            alive=state.alive(now, timeout),
            stopped=state.stopped,
            last_seen=state.last_seen,
            seconds_since_heartbeat=max(0.0, now - state.last_seen),
            documents=state.documents,
            batches=state.batches,
            mean_batch_size=state.documents / state.batches if state.batches else None,
            padded_tokens=state.padded_tokens,
            peak_host_bytes=state.peak_host_bytes,
            peak_gpu_bytes=state.peak_gpu_bytes,
        )


class WorkerList(_Out):
    data: list[WorkerOut]
    """Newest heartbeat first."""
    heartbeat_timeout: float
    """Seconds without a heartbeat after which a worker counts as gone."""


@router.get("/workers", summary="Workers, live ones (or every one), newest heartbeat first")
def list_workers(
    request: Request,
    client: ClientDep,
    all: Annotated[bool, Query(description="Also workers that stopped or stopped beating")] = False,
) -> WorkerList:
    settings: Settings = request.app.state.settings
    timeout, now = settings.heartbeat_timeout, time.time()
    workers = [WorkerOut.of(w, now, timeout) for w in client.every_worker()]
    return WorkerList(data=[w for w in workers if all or w.alive], heartbeat_timeout=timeout)
