"""The models live workers serve, and the check that a request names one that
some worker has served."""

from __future__ import annotations

from fastapi import APIRouter

from docqueue.api.deps import ClientDep
from docqueue.api.errors import ApiError
from docqueue.api.schemas import ModelList, ModelOut
from docqueue.producer.client import Client

router = APIRouter(prefix="/api", tags=["models"])


@router.get("/models", summary="The models live workers serve, with their tasks")
def list_models(client: ClientDep) -> ModelList:
    return ModelList(data=[ModelOut.of(served) for served in client.models()])


def known_model(client: Client, model: str, task: str) -> None:
    """Refuse a model no worker has ever served (a typo, most likely).  A model
    whose workers are down right now is accepted: its documents wait in the queue,
    and the response's ``warning`` says why."""
    coverage = client.coverage(model, task, fresh=False)
    if coverage.last_seen is not None or coverage.doing:
        return
    names = ", ".join(served.name for served in client.models()) or "none"
    raise ApiError(
        422,
        f"unknown model {model}: no worker has served it (live workers serve: {names})",
        "model",
    )
