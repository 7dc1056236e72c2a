"""Reranking over HTTP as a search backend calls it: Cohere's ``/v1/rerank``, TEI's
``/rerank`` and vLLM's ``/v1/score``, against a real ``docqueue serve`` and a real
worker serving the packaged all-MiniLM-L6-v2 (real weights, so a passage about the
query really ranks first); every score checked against the cosine of the
embeddings ``/v1/embeddings`` gives for the same texts (the worker in fp32, where a
text's embedding in any batch equals its embedding alone within float tolerance)."""

from __future__ import annotations

import math

import httpx
import test_api
from test_api import error_of

from docqueue.worker.models import packaged_embedding_model

serve = test_api.serve

QUERY = "How do I read the rows of a CSV file?"
PASSAGES = [
    "sqlite3 is a DB-API 2.0 interface for SQLite databases.",
    "The csv module reads and writes tabular data in CSV format, row by row.",
    "asyncio is a library to write concurrent code using the async/await syntax.",
    "http.server defines classes for implementing HTTP servers.",
]


def embeddings(http: httpx.Client, texts: list[str]) -> list[list[float]]:
    answer = http.post("/v1/embeddings", json={"model": "mini", "input": texts})
    assert answer.status_code == 200, answer.text
    return [d["embedding"] for d in answer.json()["data"]]


#: Scores of one text embedded in different fp32 batches agree within this.
CLOSE = 1e-5


def descending(scores: list[float]) -> bool:
    return all(a >= b for a, b in zip(scores, scores[1:], strict=False))


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_rerank_and_score_in_the_shapes_search_stacks_call(serve, start_worker, tiny_classifier):
    start_worker({"mini": packaged_embedding_model(), "tiny": tiny_classifier}, dtype="float32")
    server = serve()
    http = server.http()
    query, *passages = embeddings(http, [QUERY, *PASSAGES])
    expected = [cosine(query, p) for p in passages]
    best_first = sorted(range(len(PASSAGES)), key=lambda i: -expected[i])
    assert best_first[0] == 1  # the csv passage: real weights rank it first

    # Cohere's shape: strings or {"text": ...}, top_n, return_documents
    documents = [*PASSAGES[:3], {"text": PASSAGES[3]}]
    body = {"model": "mini", "query": QUERY, "documents": documents}
    answer = http.post("/v1/rerank", json={**body, "top_n": 2, "return_documents": True})
    assert answer.status_code == 200, answer.text
    reranked = answer.json()
    assert reranked["model"] == "mini" and reranked["id"].startswith("rerank-")
    assert reranked["usage"]["total_tokens"] > 0
    results = reranked["results"]
    assert len(results) == 2 and results[0]["index"] == 1
    assert descending([r["relevance_score"] for r in results])
    for result in results:
        assert abs(result["relevance_score"] - expected[result["index"]]) < CLOSE
        assert result["document"] == {"text": PASSAGES[result["index"]]}
    everything = http.post("/v1/rerank", json=body).json()["results"]
    assert sorted(r["index"] for r in everything) == [0, 1, 2, 3]
    assert descending([r["relevance_score"] for r in everything])
    assert [r["index"] for r in everything[:2]] == [r["index"] for r in results]
    assert all("document" not in r for r in everything)

    # TEI's shape, the model left out: the one embedding model live workers serve
    tei = http.post("/rerank", json={"query": QUERY, "texts": PASSAGES, "return_text": True})
    assert tei.status_code == 200, tei.text
    assert tei.json()[0]["index"] == 1 and descending([r["score"] for r in tei.json()])
    for rank in tei.json():
        assert abs(rank["score"] - expected[rank["index"]]) < CLOSE
        assert rank["text"] == PASSAGES[rank["index"]]

    # vLLM's score: one text against each, in input order; two lists pairwise
    scored = http.post("/v1/score", json={"model": "mini", "text_1": QUERY, "text_2": PASSAGES})
    assert scored.status_code == 200, scored.text
    data = scored.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2, 3]
    assert all(d["object"] == "score" for d in data)
    for d in data:
        assert abs(d["score"] - expected[d["index"]]) < CLOSE
    pairs = {"model": "mini", "text_1": PASSAGES[:2], "text_2": [QUERY, PASSAGES[0]]}
    pairwise = http.post("/v1/score", json=pairs).json()["data"]
    assert abs(pairwise[0]["score"] - expected[0]) < CLOSE
    assert abs(pairwise[1]["score"] - cosine(passages[1], passages[0])) < CLOSE

    # refusals, one line each, nothing queued
    uneven = {"model": "mini", "text_1": PASSAGES[:2], "text_2": PASSAGES[:3]}
    assert "must be as long" in error_of(http.post("/v1/score", json=uneven), 422)["message"]
    classifier = http.post("/v1/rerank", json={**body, "model": "tiny"})
    message = error_of(classifier, 422)["message"]
    assert message.startswith("model tiny cannot embed (it does classify)"), message
    assert error_of(http.post("/v1/rerank", json={**body, "documents": []}), 422)
    blank = http.post("/v1/rerank", json={**body, "documents": ["a passage", " \n"]})
    assert error_of(blank, 422)["message"] == "documents[1]: empty text (whitespace only)"
    unknown = http.post("/v1/rerank", json={**body, "rank_fields": ["title"]})
    assert "rank_fields" in error_of(unknown, 422)["message"]


def test_rerank_needs_a_token_like_every_other_route(serve):
    server = serve()
    anonymous = httpx.post(
        f"{server.url}/v1/rerank", json={"model": "mini", "query": "q", "documents": ["d"]}
    )
    assert anonymous.status_code == 401, anonymous.text
    tei = httpx.post(f"{server.url}/rerank", json={"query": "q", "texts": ["d"]})
    assert tei.status_code == 401, tei.text
