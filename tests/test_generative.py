"""Summarization and generation end to end: Redis, a real worker, SQL — on SQLite and
PostgreSQL.  The worker's batched answers equal each document run alone in-process."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy import func, select

from docqueue.config import Settings
from docqueue.db.schema import Job
from docqueue.params import InvalidParams, validate_params
from docqueue.producer.documents import InvalidDocument
from docqueue.worker.models import load_model
from docqueue.worker.runners import Limits, runners_for, tokenized


def alone(path: str, task: str, docs: list, params: dict) -> list[dict]:
    runner = runners_for(
        load_model("ref", path, Settings(device="cpu")), Limits(1 << 20, 64, 1024)
    )[task]
    params = validate_params(task, params)
    outputs = []
    for doc in docs:
        features = tokenized(runner.preprocess([doc], params))
        with torch.inference_mode():
            raw = runner.forward(runner.collate(features), params)
        outputs.append(runner.postprocess(raw, features, params)[0].output)
    return outputs


def same_fields(rows: list[dict], expected: list[dict]) -> list[dict]:
    """Each row's fields that its expected output has."""
    return [{k: row.get(k) for k in want} for row, want in zip(rows, expected, strict=True)]


def test_summaries_through_the_queue_equal_summaries_alone(
    client, start_worker, tiny_models, sample_texts
):
    start_worker({"bart": tiny_models["bart"]})
    docs = sample_texts[:40]
    params = {"max_new_tokens": 10, "min_new_tokens": 2}
    job = client.submit_many(docs, task="summarize", model="bart", params=params)
    job.wait(timeout=120)
    rows = list(job.results())
    assert [r["status"] for r in rows] == ["done"] * len(docs)
    expected = alone(tiny_models["bart"], "summarize", docs, params)
    # the text, and the tokens counted and why it stopped, as alone
    assert same_fields(rows, expected) == expected
    # documents past the tiny model's 256-token input limit are marked truncated
    assert any(r.get("truncated") for r in rows)
    assert not all(r.get("truncated") for r in rows)


def test_generation_and_chat_through_the_queue(client, start_worker, tiny_models, sample_texts):
    start_worker({"gpt2": tiny_models["gpt2"], "chat": tiny_models["llama"]})
    prompts = [t[:120] for t in sample_texts[:30]]
    params = {"max_new_tokens": 8, "min_new_tokens": 8}
    job = client.submit_many(prompts, task="generate", model="gpt2", params=params)
    chat = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What does the socket module do?"},
    ]
    reply = client.submit(chat, task="generate", model="chat", params=params)
    job.wait(timeout=120)
    rows = list(job.results())
    expected = alone(tiny_models["gpt2"], "generate", prompts, params)
    assert same_fields(rows, expected) == expected
    assert {(r["completion_tokens"], r["finish_reason"]) for r in rows} == {(8, "length")}
    answer = reply.result(timeout=60)
    from docqueue.protocol import ChatMessage

    assert (
        answer["generated_text"]
        == alone(tiny_models["llama"], "generate", [[ChatMessage(**m) for m in chat]], params)[0][
            "generated_text"
        ]
    )


def test_out_of_range_parameters_are_refused_at_submit_time(client):
    with pytest.raises(InvalidParams, match="num_beams"):
        client.submit_many(["a document"], task="summarize", model="bart", params={"num_beams": 40})
    with pytest.raises(InvalidParams, match="top_p"):
        client.submit("a prompt", task="generate", model="gpt2", params={"top_p": 2})
    with pytest.raises(InvalidParams, match="exceeds the cap"):
        client.submit(
            "a prompt",
            task="generate",
            model="gpt2",
            params={"max_new_tokens": client.settings.max_new_tokens_cap + 1},
        )
    with pytest.raises(InvalidDocument, match="summarize takes text"):
        client.submit([{"role": "user", "content": "hi"}], task="summarize", model="bart")
    with client.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Job)).scalar() == 0


def test_worker_enforces_its_own_cap_on_new_tokens(client, settings, start_worker, tiny_models):
    """A producer with a higher cap than the worker: the worker refuses, per document."""
    start_worker({"gpt2": tiny_models["gpt2"]}, max_new_tokens_cap=16)
    handle = client.submit("Hello", task="generate", model="gpt2", params={"max_new_tokens": 32})
    row = handle._wait(timeout=60)
    assert row["status"] == "failed"
    assert row["error"] == "generate: max_new_tokens=32 exceeds the cap of 16 tokens"
