"""Reranking and pair scores over HTTP, in the shapes search stacks already call:

* ``POST /v1/rerank``: Cohere's shape (``query``, ``documents``, ``top_n``,
  ``return_documents`` in; ``results`` of ``index`` and ``relevance_score`` out, best
  first), which vLLM, infinity and Jina answer too;
* ``POST /rerank``: TEI's shape (``query``, ``texts``, ``return_text`` in; a list of
  ``index`` and ``score`` out, best first; ``raw_scores`` and ``truncation_direction``
  taken at their defaults); TEI serves one model, so ``model`` may be
  left out when live workers serve exactly one model that reranks or embeds;
* ``POST /v1/score``: vLLM's shape (``text_1`` against each ``text_2``, or pairwise
  when both are lists; ``data`` of ``index`` and ``score`` out, in input order).

A model that reranks (a cross-encoder: ``rerank``, a sequence classifier with one
output) scores each (query, passage) pair as one document; an embedding model
scores by the cosine of the query's and the passage's embeddings (a bi-encoder, as
vLLM's score API does with embedding models), each distinct text one document.
Either way the documents go on the interactive lane and into the ledger, as any
``/v1/embeddings`` input does; a model that does neither is refused in one line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from docqueue.api.deps import ClientDep
from docqueue.api.errors import ApiError
from docqueue.api.openai.schemas import MAX_INPUTS, Prompt
from docqueue.api.openai.sync import submit_and_wait
from docqueue.producer.client import Client
from docqueue.protocol import ModelName

router = APIRouter(tags=["rerank"])

Texts = Annotated[list[Prompt], Field(min_length=1, max_length=MAX_INPUTS)]
#: A query's characters at most: a cross-encoder reads it with every passage (so a
#: request stores it once per passage), and no model reads more than a few thousand.
MAX_QUERY_CHARS = 8192
Query = Annotated[Prompt, StringConstraints(max_length=MAX_QUERY_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class _Out(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


class TextObject(_Strict):
    text: Prompt


class RerankRequest(_Strict):
    """Cohere's rerank request."""

    model: ModelName
    """The docqueue model's name (GET /v1/models): a cross-encoder or an embedding
    model."""
    query: Query
    documents: Annotated[list[Prompt | TextObject], Field(min_length=1, max_length=MAX_INPUTS)]
    """The passages: strings, or objects with a ``text`` field."""
    top_n: int | None = Field(None, ge=1)
    """Only the best ``top_n`` results (all when absent)."""
    return_documents: bool = False
    """Each result carries its passage as ``document.text``."""

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankedDocument(_Out):
    text: str


class RerankResult(_Out):
    index: int
    """The passage's position in the request."""
    relevance_score: float
    """The cross-encoder's score in [0, 1], or the cosine similarity of the query's
    and the passage's embeddings."""
    document: RerankedDocument | None = None


class Usage(_Out):
    prompt_tokens: int
    """Tokens the model read: a cross-encoder reads the query with each passage, an
    embedding model each distinct text once."""
    total_tokens: int
    """The same (nothing is generated)."""


class RerankResponse(_Out):
    id: str
    model: str
    results: list[RerankResult]
    usage: Usage


class TeiRerankRequest(_Strict):
    """TEI's rerank request (``truncate`` is accepted: docqueue always truncates to
    the model's window, keeping the start of each text)."""

    query: Query
    texts: Texts
    model: ModelName | None = None
    """Optional: the one model live workers serve that reranks or embeds, when absent."""
    return_text: bool = False
    truncate: bool | None = None
    raw_scores: bool = False
    """Only false: docqueue answers scores (a sigmoid, or a cosine), not logits."""
    truncation_direction: str = "right"
    """Only right (any case): the end of a long text is cut."""


class TeiRank(_Out):
    index: int
    score: float
    text: str | None = None


class ScoreRequest(_Strict):
    """vLLM's score request."""

    model: ModelName
    text_1: Query | Texts
    """One text, scored against each ``text_2``; or a list as long as ``text_2``,
    scored pairwise."""
    text_2: Prompt | Texts


class Score(_Out):
    index: int
    object: str = "score"
    score: float


class ScoreResponse(_Out):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[Score]
    usage: Usage


@dataclass(frozen=True)
class Pair:
    """Two texts to score together, and where each is in the request (for errors)."""

    first: str
    second: str
    first_place: str
    second_place: str


@router.post(
    "/v1/rerank",
    summary="Rerank passages against a query (Cohere's shape)",
    response_model_exclude_none=True,
)
async def rerank(body: RerankRequest, request: Request, client: ClientDep) -> RerankResponse:
    passages = body.texts()
    pairs = _against("query", body.query, "documents", passages)
    scores, tokens, job = await _pair_scores(request, client, body.model, pairs)
    results = [
        RerankResult(
            index=i,
            relevance_score=scores[i],
            document=RerankedDocument(text=passages[i]) if body.return_documents else None,
        )
        for i in _best_first(scores, body.top_n)
    ]
    usage = Usage(prompt_tokens=tokens, total_tokens=tokens)
    return RerankResponse(id=f"rerank-{job}", model=body.model, results=results, usage=usage)


@router.post(
    "/rerank",
    summary="Rerank texts against a query (TEI's shape)",
    response_model_exclude_none=True,
)
async def rerank_tei(body: TeiRerankRequest, request: Request, client: ClientDep) -> list[TeiRank]:
    if body.raw_scores:
        raise ApiError(
            422,
            "raw_scores: docqueue answers scores (a cross-encoder's sigmoid, or a cosine), "
            "not raw logits; leave it false",
            "raw_scores",
        )
    if body.truncation_direction.lower() != "right":
        raise ApiError(
            422,
            "truncation_direction: docqueue cuts the end of a long text (Right) only",
            "truncation_direction",
        )
    pairs = _against("query", body.query, "texts", body.texts)
    model = body.model
    if not model:
        model = str(await run_in_threadpool(_the_scoring_model, client))
    scores, _, _ = await _pair_scores(request, client, model, pairs)
    return [
        TeiRank(index=i, score=scores[i], text=body.texts[i] if body.return_text else None)
        for i in _best_first(scores, None)
    ]


@router.post("/v1/score", summary="Score text pairs (vLLM's shape)")
async def score(body: ScoreRequest, request: Request, client: ClientDep) -> ScoreResponse:
    seconds = [body.text_2] if isinstance(body.text_2, str) else list(body.text_2)
    second_places = _places("text_2", len(seconds), isinstance(body.text_2, list))
    if isinstance(body.text_1, str):
        pairs = _against("text_1", body.text_1, "text_2", seconds, second_places)
    elif len(body.text_1) != len(seconds):
        raise ApiError(
            422,
            f"text_1 holds {len(body.text_1)} texts and text_2 {len(seconds)}: a list of "
            "text_1 is scored pairwise with text_2, so they must be as long",
            "text_1",
        )
    else:
        first_places = _places("text_1", len(body.text_1), True)
        pairs = [
            Pair(*texts, *places)
            for texts, places in zip(
                zip(body.text_1, seconds, strict=True),
                zip(first_places, second_places, strict=True),
                strict=True,
            )
        ]
        _refuse_blank(pairs)
    scores, tokens, job = await _pair_scores(request, client, body.model, pairs)
    return ScoreResponse(
        id=f"score-{job}",
        created=int(time.time()),
        model=body.model,
        data=[Score(index=i, score=score) for i, score in enumerate(scores)],
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )


def _places(name: str, count: int, listed: bool = True) -> list[str]:
    return [f"{name}[{i}]" if listed else name for i in range(count)]


def _against(
    name: str, text: str, others_name: str, others: list[str], places: list[str] | None = None
) -> list[Pair]:
    """``text`` paired with each of ``others``, blank texts refused."""
    places = places or _places(others_name, len(others))
    pairs = [Pair(text, other, name, place) for other, place in zip(others, places, strict=True)]
    _refuse_blank(pairs)
    return pairs


async def _pair_scores(
    request: Request, client: Client, model: str, pairs: list[Pair]
) -> tuple[list[float], int, str]:
    """Each pair's score, the tokens the model read and the first document's job
    (the response's id): a cross-encoder's (``rerank``), one document per pair, or
    the cosine of an embedding model's embeddings, one document per distinct text."""
    if await run_in_threadpool(_scorer, client, model) == "rerank":
        documents = [{"query": p.first, "passage": p.second} for p in pairs]
        places = [p.second_place for p in pairs]
        handles, rows = await submit_and_wait(
            request, client, "rerank", model, documents, {}, places
        )
        scores = [float(row["score"]) for row in rows]
    else:
        distinct: dict[str, str] = {}  # each text once, with where it first is
        for p in pairs:
            distinct.setdefault(p.first, p.first_place)
            distinct.setdefault(p.second, p.second_place)
        texts = list(distinct)
        handles, rows = await submit_and_wait(
            request, client, "embed", model, texts, {}, list(distinct.values())
        )
        vectors = {text: row["embedding"] for text, row in zip(texts, rows, strict=True)}
        scores = await run_in_threadpool(
            lambda: [cosine(vectors[p.first], vectors[p.second]) for p in pairs]
        )
    tokens = sum(int(row.get("prompt_tokens") or 0) for row in rows)
    return scores, tokens, handles[0].job_id


def _scorer(client: Client, model: str) -> str:
    """``rerank`` for a cross-encoder, ``embed`` for an embedding model (and for a
    model no live worker serves: the embeddings path says why it cannot run); a
    model whose live workers do neither is refused in one line."""
    tasks: list[str] = []
    for task in ("rerank", "embed"):
        coverage = client.coverage(model, task, fresh=False)
        if coverage.doing:
            return task
        tasks = coverage.tasks
    if tasks:
        raise ApiError(
            422,
            f"model {model} neither reranks nor embeds (it does {', '.join(sorted(tasks))}): "
            "/v1/rerank scores with a cross-encoder, or by the cosine of an embedding "
            "model's embeddings",
            "model",
        )
    return "embed"


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms else 0.0


def _best_first(scores: list[float], top_n: int | None) -> list[int]:
    """Positions by score, best first (ties in input order), the first ``top_n``."""
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    return ranked if top_n is None else ranked[:top_n]


def _refuse_blank(pairs: list[Pair]) -> None:
    """422 naming the first text that holds nothing but whitespace (a model has
    nothing to read), before anything is queued."""
    for pair in pairs:
        for text, where in ((pair.first, pair.first_place), (pair.second, pair.second_place)):
            if not text.strip():
                raise ApiError(422, f"{where}: empty text (whitespace only)", where)


def _the_scoring_model(client: Client) -> str:
    """The one model live workers serve that reranks or embeds (TEI's requests name
    none)."""
    scorers = sorted(m.name for m in client.models() if {"rerank", "embed"} & set(m.tasks))
    if len(scorers) == 1:
        return scorers[0]
    found = ", ".join(scorers) if scorers else "none"
    raise ApiError(
        422,
        f"name the model: live workers serve {len(scorers)} models that rerank or embed ({found})",
        "model",
    )
