"""OpenAI-compatible synchronous endpoints: ``/v1/embeddings``, ``/v1/completions``,
``/v1/chat/completions`` and ``/v1/models``, so an OpenAI SDK in any language works
against docqueue with only its ``base_url`` and ``api_key`` changed.

Each input is one document submitted with :meth:`Client.submit` (the interactive lane,
which workers serve first) and waited for up to ``api_sync_timeout``.  Nothing is
queued unless every input can run: the model, the task, the parameters and each
text are checked first.  A request that runs out of time answers 504 with
``x-should-retry: false`` (an SDK would otherwise resubmit the documents) and names
the queued jobs, whose results ``GET /api/documents/{job_id}`` reads later.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from docqueue.api.deps import ClientDep
from docqueue.api.errors import ApiError
from docqueue.api.models import known_model
from docqueue.api.openai.schemas import (
    ChatCompletionsRequest,
    CompletionsRequest,
    EmbeddingsRequest,
    OpenAIModel,
    OpenAIModelList,
)
from docqueue.api.waiting import DoneNotices
from docqueue.config import Settings
from docqueue.formats import openai_bodies
from docqueue.formats.openai_bodies import (
    ChatCompletionResponse,
    CompletionResponse,
    EmbeddingsResponse,
)
from docqueue.params import validate_params
from docqueue.producer.client import Client, ResultHandle
from docqueue.producer.documents import as_record, check
from docqueue.tasks import cannot_do

router = APIRouter(prefix="/v1", tags=["openai"])

#: Not retried by OpenAI's SDKs although a 5xx: the documents are already queued.
NO_RETRY = {"x-should-retry": "false"}


@router.post("/embeddings", summary="Embed texts (OpenAI-compatible)")
async def create_embeddings(
    body: EmbeddingsRequest, request: Request, client: ClientDep
) -> EmbeddingsResponse:
    _, rows = await submit_and_wait(request, client, "embed", body.model, body.texts(), {})
    dims = {len(row["embedding"]) for row in rows}
    if body.dimensions is not None and dims != {body.dimensions}:
        raise ApiError(
            422,
            f"dimensions: model {body.model} gives {', '.join(map(str, sorted(dims)))}-"
            f"dimensional embeddings, not {body.dimensions}; leave dimensions out",
            "dimensions",
        )
    return openai_bodies.embeddings(rows, body.model, body.encoding_format)


@router.post("/completions", summary="Complete prompts (OpenAI-compatible, not streamed)")
async def create_completion(
    body: CompletionsRequest, request: Request, client: ClientDep
) -> CompletionResponse:
    texts = body.texts()
    handles, rows = await submit_and_wait(
        request, client, "generate", body.model, texts, body.generate_params()
    )
    return openai_bodies.completion(f"cmpl-{handles[0].job_id}", int(time.time()), body.model, rows)


@router.post("/chat/completions", summary="Answer a conversation (OpenAI-compatible)")
async def create_chat_completion(
    body: ChatCompletionsRequest, request: Request, client: ClientDep
) -> ChatCompletionResponse:
    handles, rows = await submit_and_wait(
        request, client, "generate", body.model, [body.document()], body.generate_params()
    )
    return openai_bodies.chat_completion(
        f"chatcmpl-{handles[0].job_id}", int(time.time()), body.model, rows[0]
    )


@router.get("/models", summary="The models live workers serve (OpenAI-compatible)")
def list_models(client: ClientDep) -> OpenAIModelList:
    return OpenAIModelList(data=[_model(s.name, s.tasks) for s in client.models()])


@router.get("/models/{model}", summary="One model live workers serve (OpenAI-compatible)")
def read_model(model: str, client: ClientDep) -> OpenAIModel:
    for served in client.models():
        if served.name == model:
            return _model(served.name, served.tasks)
    raise ApiError(404, f"model {model[:200]}: no live worker serves it (GET /v1/models)", "model")


def _model(name: str, tasks: list[str]) -> OpenAIModel:
    return OpenAIModel(id=name, created=0, tasks=tasks)


# --- submitting and waiting ----------------------------------------------------------


async def submit_and_wait(
    request: Request,
    client: Client,
    task: str,
    model: str,
    documents: Sequence[Any],
    params: dict[str, Any],
    places: Sequence[str] | None = None,
) -> tuple[list[ResultHandle], list[dict[str, Any]]]:
    """Queue each document on the interactive lane and wait for every result: the
    handles and the result rows, in input order.  ``places``: where each document
    is in the request, for errors (default ``input[i]``, or ``prompt[i]``)."""
    where = list(places) if places is not None else _places(task, len(documents))
    handles = await run_in_threadpool(_submit_all, client, task, model, documents, params, where)
    settings: Settings = request.app.state.settings
    rows = await _wait_all(request.app.state.notices, handles, settings.api_sync_timeout, where)
    return handles, rows


def _places(task: str, count: int) -> list[str]:
    name = "input" if task == "embed" else "prompt"
    return [f"{name}[{i}]" if count > 1 else name for i in range(count)]


def _submit_all(
    client: Client,
    task: str,
    model: str,
    documents: Sequence[Any],
    params: dict[str, Any],
    places: Sequence[str],
) -> list[ResultHandle]:
    """Every document queued, or none: everything that can be checked before the
    first is queued is checked first."""
    validate_params(task, params)  # again by submit, with the workers' token cap
    for document, where in zip(documents, places, strict=True):
        checked = check(
            as_record((None, document)), task=task, max_chars=client.settings.max_document_chars
        )
        if checked.error:
            raise ApiError(422, f"{where}: {checked.error}", where)
    _check_served(client, model, task)
    return [client.submit(doc, task=task, model=model, params=params) for doc in documents]


def _check_served(client: Client, model: str, task: str) -> None:
    """Refuse, before anything is queued, a model no worker ever served (422), one
    whose live workers cannot do ``task`` (422), and one no live worker serves now
    (503: a synchronous caller would only wait out its timeout)."""
    known_model(client, model, task)
    coverage = client.coverage(model, task, fresh=False)
    if coverage.doing:
        return
    if coverage.tasks:
        raise ApiError(422, cannot_do(model, task, coverage.tasks), "model")
    raise ApiError(
        503, f"{coverage.problem()}: nothing was queued; retry when a worker serves it", "model"
    )


async def _wait_all(
    notices: DoneNotices, handles: list[ResultHandle], timeout: float, places: Sequence[str]
) -> list[dict[str, Any]]:
    """Each document's result, woken by the process's one subscription (no thread
    or Redis connection held while waiting); 504, 422 or 409 when one has none."""
    deadline = time.monotonic() + timeout
    rows = []
    for handle, where in zip(handles, places, strict=True):
        await notices.wait(handle, max(0.0, deadline - time.monotonic()))
        row = await run_in_threadpool(handle.read)
        if row is None:
            raise _timed_out(handles, timeout)
        if row["status"] == "failed":
            error = row.get("error") or "unknown error"
            raise ApiError(422, f"the model could not run {where}: {error}", where)
        if row["status"] == "cancelled":
            raise ApiError(409, f"job {handle.job_id} was cancelled before its result was computed")
        rows.append(row)
    return rows


def _timed_out(handles: list[ResultHandle], timeout: float) -> ApiError:
    jobs = [h.job_id for h in handles]
    shown = ", ".join(jobs[:5]) + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")
    return ApiError(
        504,
        f"no result within {timeout:g}s (DOCQUEUE_API_SYNC_TIMEOUT); the documents stay "
        f"queued and will be computed: read each with GET /api/documents/{{job_id}} "
        f"(jobs: {shown})",
        headers=NO_RETRY,
    )
