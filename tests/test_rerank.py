"""Reranking as a search backend calls it: Cohere's ``/v1/rerank``, TEI's ``/rerank``
and vLLM's ``/v1/score``, against a real ``docqueue serve`` and a real worker
serving a cross-encoder (checked against a plain loop over
AutoModelForSequenceClassification, batched and alone, and through the native API and
batch lines), and the packaged all-MiniLM-L6-v2 (real weights, so a passage about the
query really ranks first); every score checked against the cosine of the
embeddings ``/v1/embeddings`` gives for the same texts (the worker in fp32, where a
text's embedding in any batch equals its embedding alone within float tolerance)."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import httpx
import pytest
import test_api
import torch
from test_api import error_of
from test_cli import docqueue, no_traceback
from test_openai_batch import jsonl, lines_of, sdk, wait_batch
from test_runners import CPU, LIMITS

from docqueue.producer.documents import as_record, check
from docqueue.tasks import CROSS_ENCODER
from docqueue.testing import build_cross_encoder
from docqueue.worker.models import load_model, packaged_embedding_model
from docqueue.worker.runners import runners_for, tokenized

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
    assert message.startswith("model tiny neither reranks nor embeds (it does classify)"), message
    empty = error_of(http.post("/v1/rerank", json={**body, "documents": []}), 422)
    assert "documents" in empty["message"] and "at least 1" in empty["message"], empty
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


# --- cross-encoders ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory, sample_texts: list[str]) -> str:
    """A tiny random BERT cross-encoder with a 64-token window."""
    path = tmp_path_factory.mktemp("cross-encoder") / "model"
    return str(build_cross_encoder(path, sample_texts, max_length=64))


def plain_loop(path: str, pairs: list[tuple[str, str]]) -> list[float]:
    """What a user writes: each pair through AutoModelForSequenceClassification alone,
    truncated to the window, the sigmoid of the one logit."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    scores = []
    with torch.inference_mode():
        for query, passage in pairs:
            encoded = tokenizer(query, passage, truncation=True, max_length=64, return_tensors="pt")
            scores.append(float(model(**encoded).logits[0, 0].sigmoid()))
    return scores


def pair_docs(sample_texts: list[str]) -> list[dict[str, str]]:
    """Short and long passages (past the window, past the tokenized prefix), mixed."""
    passages = [t[:n] for t, n in zip(sample_texts, [40, 400, 90, 2000, 10, 700], strict=False)]
    passages.append(" ".join(sample_texts)[:20000])
    return [{"query": "how do I read a csv file", "passage": p} for p in passages]


def test_a_cross_encoder_scores_as_a_plain_loop_and_batched_equals_alone(
    cross_encoder, sample_texts
):
    from test_encoder_tasks import outputs

    loaded = load_model("xenc", cross_encoder, CPU)
    assert loaded.family == CROSS_ENCODER and loaded.tasks == ("rerank",)
    runner = runners_for(loaded, LIMITS)["rerank"]
    docs = pair_docs(sample_texts)
    expected = plain_loop(cross_encoder, [(d["query"], d["passage"]) for d in docs])
    assert max(expected) - min(expected) > 0.05  # spread enough for a ranking to mean much
    batched = outputs(runner, docs, {})
    for doc, found, score in zip(docs, batched, expected, strict=True):
        assert abs(found["score"] - score) < 1e-5
        assert abs(outputs(runner, [doc], {})[0]["score"] - found["score"]) < 1e-5
    features = tokenized(runner.preprocess(docs, {}))
    assert features[-1].truncated and not features[0].truncated


@pytest.mark.parametrize(
    ("task", "document", "problem"),
    [
        ("rerank", "just text", "rerank takes an object of fields (query, passage), not text"),
        ("rerank", {"query": "q"}, "no 'passage' field: rerank takes query, passage"),
        ("rerank", {"query": " ", "passage": "p"}, "field 'query' is whitespace only"),
        ("rerank", {"query": "q", "passage": ""}, "field 'passage' is empty"),
        ("rerank", {"query": "q", "passage": "p", "title": "t"}, "unknown field 'title': "),
        ("rerank", {"query": "q", "passage": 3}, "field 'passage' is a number, not a string"),
        ("classify", {"query": "q", "passage": "p"}, "classify takes text, not an object of"),
    ],
)
def test_bad_pairs_get_an_error_naming_the_problem(task, document, problem):
    checked = check(as_record(("d1", document)), task=task, max_chars=1000)
    assert checked.doc is None and checked.error is not None
    assert checked.error.startswith(problem), checked.error


def test_a_cross_encoder_through_rerank_score_the_native_api_and_batch_lines(
    serve, start_worker, cross_encoder, sample_texts
):
    start_worker({"xenc": cross_encoder, "mini": packaged_embedding_model()}, dtype="float32")
    server = serve(DOCQUEUE_MAX_DOCUMENT_CHARS="30000")
    http = server.http()
    docs = pair_docs(sample_texts)
    passages = [d["passage"] for d in docs]
    expected = plain_loop(cross_encoder, [(d["query"], d["passage"]) for d in docs])

    body = {"model": "xenc", "query": docs[0]["query"], "documents": passages, "top_n": 3}
    answer = http.post("/v1/rerank", json=body)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["index"] for r in results] == sorted(
        range(len(passages)), key=lambda i: -expected[i]
    )[:3]
    for result in results:
        assert abs(result["relevance_score"] - expected[result["index"]]) < 1e-5

    pairs = {"model": "xenc", "text_1": docs[0]["query"], "text_2": passages[:2]}
    scored = http.post("/v1/score", json=pairs).json()["data"]
    assert [abs(d["score"] - expected[i]) < 1e-5 for i, d in enumerate(scored)] == [True, True]

    # TEI's shape names no model: two models here rerank or embed; its other fields
    # are taken at their defaults, and refused in one line otherwise
    ambiguous = http.post("/rerank", json={"query": "q", "texts": ["a"]})
    assert "name the model: live workers serve 2 models" in error_of(ambiguous, 422)["message"]
    tei = {"model": "xenc", "query": "q", "texts": ["a", "b"]}
    plain = http.post("/rerank", json={**tei, "raw_scores": False, "truncation_direction": "Right"})
    assert plain.status_code == 200, plain.text
    assert sorted(r["index"] for r in plain.json()) == [0, 1]
    raw = error_of(http.post("/rerank", json={**tei, "raw_scores": True}), 422)
    assert raw["param"] == "raw_scores" and "not raw logits" in raw["message"]
    left = error_of(http.post("/rerank", json={**tei, "truncation_direction": "Left"}), 422)
    assert left["param"] == "truncation_direction"

    # a pair over the server's document size names the passage it holds
    long_pair = {**body, "documents": ["short", "x" * 40000]}
    too_long = error_of(http.post("/v1/rerank", json=long_pair), 422)
    assert too_long["param"] == "documents[1]", too_long
    assert too_long["message"].startswith("documents[1]: fields hold 40"), too_long

    # one pair through the native API, and a text refused for it in one line
    native = http.post(
        "/api/documents",
        params={"wait": 30},
        json={"task": "rerank", "model": "xenc", "text": docs[1]},
    )
    assert native.status_code == 200, native.text
    assert abs(native.json()["result"]["score"] - expected[1]) < 1e-5
    refused = http.post(
        "/api/documents", json={"task": "rerank", "model": "xenc", "text": "only a query"}
    )
    assert "rerank takes an object of fields (query, passage)" in error_of(refused, 422)["message"]

    # batch lines of /v1/docqueue/rerank through the openai SDK
    client = sdk(server)
    endpoint: Any = "/v1/docqueue/rerank"
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": endpoint,
            "body": {"model": "xenc", "input": d},
        }
        for i, d in enumerate(docs[:2])
    ]
    uploaded = client.files.create(file=("pairs.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h"
    )
    finished = wait_batch(client, batch.id)
    assert finished.status == "completed", finished
    output = lines_of(client, finished.output_file_id)
    for line, score in zip(output, expected[:2], strict=True):
        assert abs(line["response"]["body"]["score"] - score) < 1e-5


def test_annotate_reranks_pairs_from_a_jsonl_files_text_objects(tmp_path, cross_encoder):
    """A JSONL line's text may be the pair itself; a line of plain text is an error
    row naming what rerank takes."""
    docs = pair_docs(["The csv module reads rows.", "asyncio runs coroutines."])[:2]
    lines = [{"id": f"p{i}", "text": d} for i, d in enumerate(docs)]
    lines.append({"id": "t", "text": "plain text"})
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = docqueue(
        "annotate",
        str(source),
        "--task",
        "text-ranking",
        "--model",
        cross_encoder,
        "--out",
        "out.csv",
        cwd=tmp_path,
    )
    no_traceback(done)
    assert done.returncode == 1, done.stderr  # one document failed
    assert "id t: rerank takes an object of fields (query, passage), not text" in done.stderr
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    expected = plain_loop(cross_encoder, [(d["query"], d["passage"]) for d in docs])
    assert [r["status"] for r in rows] == ["done", "done", "failed"]
    for row, doc, score in zip(rows, docs, expected, strict=False):
        assert json.loads(row["text"]) == doc
        assert abs(float(row["score"]) - score) < 1e-5

    # a Parquet file's text column may be a struct of strings (what annotate writes)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["p0", "p1"], "text": docs}), tmp_path / "pairs.parquet")
    again = docqueue(
        "annotate",
        "pairs.parquet",
        "--task",
        "rerank",
        "--model",
        cross_encoder,
        "--out",
        "again.jsonl",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    lines = (tmp_path / "again.jsonl").read_text().splitlines()
    answered: list[dict[str, Any]] = [json.loads(line) for line in lines]
    assert len(answered) == 2
    assert all(abs(a["score"] - s) < 1e-5 for a, s in zip(answered, expected, strict=True))
