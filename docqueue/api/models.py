"""The models live workers serve, and the check that a request names one that
some worker has served or ``DOCQUEUE_MODELS`` declares."""

from __future__ import annotations

from fastapi import APIRouter

from docqueue.api.deps import ClientDep
from docqueue.api.errors import ApiError
from docqueue.api.schemas import ModelList, ModelOut
from docqueue.core import fleet
from docqueue.core.errors import UnknownModel
from docqueue.producer.client import Client

router = APIRouter(prefix="/api", tags=["models"])


@router.get("/models", summary="The models live workers serve, with their tasks")
def list_models(client: ClientDep) -> ModelList:
    return ModelList(data=[ModelOut.of(served) for served in client.models()])


def known_model(client: Client, model: str, task: str) -> None:
    """Refuse a model no worker has ever served and ``DOCQUEUE_MODELS`` does not
    declare (:func:`docqueue.core.fleet.known_model`).  A model whose workers are
    down right now is accepted: its documents wait in the queue, and the response's
    ``warning`` says why."""
    try:
        fleet.known_model(client.services, model, task)
    except UnknownModel as exc:
        raise ApiError(422, str(exc), "model") from None
