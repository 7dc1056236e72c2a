"""ner, fill-mask and zero-shot by entailment, in-process against ``pipeline()`` on
the same tiny weights, both in fp32: the same entities (groups, offsets, words;
scores within float tolerance), the same fill-mask tokens, the same zero-shot label
order and scores; a padded, length-sorted batch equals each document alone,
documents longer than the model's window included; bad input is an error row or a
one-line refusal."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from test_runners import CPU, LIMITS, mixed_lengths

from docqueue.params import InvalidParams, validate_params
from docqueue.protocol import Document
from docqueue.worker.models import load_model
from docqueue.worker.runners import Features, Limits, runners_for
from docqueue.worker.runners.base import Rows

STRATEGIES = ("none", "simple", "first", "average", "max")


def outputs(runner: Any, docs: Sequence[Document], params: dict[str, Any]) -> list[Any]:
    """Each document's output, or its error string."""
    features = runner.preprocess(docs, params)
    ready = [f for f in features if isinstance(f, Features)]
    found: list[Any] = [f for f in features]
    if ready:
        with torch.inference_mode():
            raw = runner.forward(runner.collate(ready), params)
        done = iter(runner.postprocess(raw, ready, params))
        found = [next(done).output if isinstance(f, Features) else f for f in features]
    return found


def batched_and_alone(runner: Any, docs: list[str], params: dict[str, Any]) -> None:
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))  # as the batcher sorts
    batched = outputs(runner, [docs[i] for i in order], params)
    for i, out in zip(order, batched, strict=True):
        same(out, outputs(runner, [docs[i]], params)[0])


def same(a: Any, b: Any, tolerance: float = 1e-4) -> None:
    """Equal, but floats within ``tolerance``; in a ranking (a dict of floats, best
    first) two entries whose scores tie within ``tolerance`` may come in either order
    (a random tiny model scores some labels alike to 1e-7)."""
    if isinstance(a, float) or isinstance(b, float):
        assert abs(float(a) - float(b)) <= tolerance, (a, b)
    elif isinstance(a, dict) and a and all(isinstance(v, float) for v in a.values()):
        assert set(a) == set(b), (a, b)
        for key in a:
            same(a[key], b[key], tolerance)
        position = {key: i for i, key in enumerate(b)}
        for first, second in itertools.pairwise(a):
            tied = abs(a[first] - a[second]) <= tolerance
            assert tied or position[first] < position[second], (a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b), (a, b)
        for key in a:
            same(a[key], b[key], tolerance)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (a, b)
        for x, y in zip(a, b, strict=True):
            same(x, y, tolerance)
    else:
        assert a == b


def plain(value: Any) -> Any:
    """The pipeline's numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


@pytest.fixture(scope="module")
def runners(encoder_models) -> dict[str, dict[str, Any]]:
    return {
        name: runners_for(load_model(name, path, CPU), LIMITS)
        for name, path in encoder_models.items()
    }


def pipe(task: str, path: str) -> Any:
    from transformers import pipeline

    # pipeline's overloads take the task as a literal; here it is a variable
    return pipeline(task, model=path, device="cpu", dtype="float32")  # type: ignore[call-overload]


def ner_params(**given: Any) -> dict[str, Any]:
    return validate_params("ner", given)


# --- ner ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ner", "ner-bpe"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_entities_equal_the_pipelines(runners, encoder_models, sample_texts, kind, strategy):
    reference = pipe("token-classification", encoder_models[kind])
    runner = runners[kind]["ner"]
    cut = [t[:80] for t in mixed_lengths(sample_texts, 16)]
    docs = [d for d in cut if len(runner.preprocess([d], ner_params())[0].rows) == 1]
    assert len(docs) >= 8  # within the window: the pipeline's default truncation keeps all
    found = outputs(runner, docs, ner_params(aggregation_strategy=strategy))
    with warnings.catch_warnings():  # the pipeline warns of the BPE heuristic
        warnings.simplefilter("ignore")
        expected = [plain(reference(d, aggregation_strategy=strategy)) for d in docs]
    assert sum(len(e) for e in expected) > 10  # a random model tags plenty
    for doc, ours, theirs in zip(docs, found, expected, strict=True):
        same(ours["entities"], theirs)
        for entity in ours["entities"]:  # offsets are into the document as given
            assert 0 <= entity["start"] <= entity["end"] <= len(doc)


@pytest.mark.parametrize("kind", ["ner", "ner-bpe"])
@pytest.mark.parametrize("strategy", STRATEGIES[1:])
def test_long_documents_are_read_in_windows_as_the_pipeline_strides(
    runners, encoder_models, sample_texts, kind, strategy
):
    reference = pipe("token-classification", encoder_models[kind])
    docs = [t for t in sample_texts if len(t) > 400][:4]
    params = ner_params(aggregation_strategy=strategy, stride=8)
    found = outputs(runners[kind]["ner"], docs, params)
    for doc, ours in zip(docs, found, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = plain(reference(doc, aggregation_strategy=strategy, stride=8))
        same(ours["entities"], theirs)
        assert max(e["end"] for e in ours["entities"]) > len(doc) * 0.8  # not truncated


def test_ner_batched_equals_alone_with_documents_over_the_window(runners, sample_texts):
    runner = runners["ner"]["ner"]
    docs = mixed_lengths(sample_texts, 16)
    windows = [len(f.rows) for f in runner.preprocess(docs, ner_params())]
    assert max(windows) >= 3 and min(windows) == 1
    for strategy in STRATEGIES:
        batched_and_alone(runner, docs, ner_params(aggregation_strategy=strategy))


ODD_TEXTS = [
    "   Leading spaces before the first word",
    "An emoji 😀 and 🐍 here",
    "tabs\tand\nlines\r\n ünïcödé",
]


@pytest.mark.parametrize("kind", ["ner", "ner-bpe"])
def test_offsets_of_odd_text_equal_the_pipelines(runners, encoder_models, kind):
    """Offsets count characters of the document as given: leading spaces, emoji
    and other characters outside the vocabulary, tabs, newlines and accents."""
    reference = pipe("token-classification", encoder_models[kind])
    runner = runners[kind]["ner"]
    for strategy in STRATEGIES:
        params = ner_params(aggregation_strategy=strategy)
        for doc, ours in zip(ODD_TEXTS, outputs(runner, ODD_TEXTS, params), strict=True):
            assert len(runner.preprocess([doc], params)[0].rows) == 1  # the pipeline reads all
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                same(ours["entities"], plain(reference(doc, aggregation_strategy=strategy)))
        if strategy == "none":
            assert any(
                e["start"] >= 3 for e in outputs(runner, ODD_TEXTS[:1], params)[0]["entities"]
            )


@pytest.mark.parametrize("kind", ["ner", "ner-bpe"])
def test_windows_that_share_no_token_equal_the_pipelines(runners, encoder_models, kind):
    """stride 0: consecutive windows meet without overlapping, as the pipeline
    reads them."""
    reference = pipe("token-classification", encoder_models[kind])
    runner = runners[kind]["ner"]
    doc = " ".join(["A sentence long enough to need several windows 😀."] * 6)
    params = ner_params(aggregation_strategy="simple", stride=0)
    assert len(runner.preprocess([doc], params)[0].rows) >= 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = plain(reference(doc, aggregation_strategy="simple", stride=0))
    same(outputs(runner, [doc], params)[0]["entities"], theirs)


class RowCounter:
    """Each forward pass's rows, counted on the way into the model."""

    def __init__(self, model: Any) -> None:
        self.rows: list[int] = []
        model.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.rows.append(int(kwargs["input_ids"].shape[0]))


@pytest.mark.parametrize("kind", ["ner", "nli"])
def test_a_document_of_more_rows_than_a_batch_allows_runs_in_passes_the_limits_allow(
    encoder_models, sample_texts, kind
):
    """One document can hold more windows (or label pairs) than the row limit or
    the token budget allows a forward pass: it runs in several, with the answers of
    one."""
    labels = zero_shot(list("abcde"))
    task, params = ("ner", ner_params()) if kind == "ner" else ("classify", labels)
    tight = Limits(budget=3 * 64, max_rows=2, max_new_tokens=8)
    wide = runners_for(load_model(kind, encoder_models[kind], CPU), LIMITS)[task]
    narrow = runners_for(load_model(kind, encoder_models[kind], CPU), tight)[task]
    counter = RowCounter(narrow.model)
    doc = " ".join(sample_texts)[:4000]
    windows = narrow.preprocess([doc], params)[0]
    assert isinstance(windows, Rows)
    rows = len(windows.rows)
    assert rows >= 5
    same(outputs(narrow, [doc], params), outputs(wide, [doc], params))
    longest = max(len(r) for r in windows.rows)
    per = min(2, tight.budget // longest)
    assert counter.rows and max(counter.rows) <= per and sum(counter.rows) == rows


def test_ner_without_aggregation_numbers_tokens_through_the_document(runners, sample_texts):
    runner = runners["ner"]["ner"]
    doc = next(t for t in sample_texts if len(t) > 300)
    params = ner_params(aggregation_strategy="none", ignore_labels=[])
    entities = outputs(runner, [doc], params)[0]["entities"]
    assert [e["index"] for e in entities] == list(range(1, len(entities) + 1))
    assert [e["start"] for e in entities] == sorted(e["start"] for e in entities)


def test_ignore_labels_and_bad_parameters(runners, sample_texts):
    runner = runners["ner"]["ner"]
    doc = sample_texts[0][:80]
    every = outputs(runner, [doc], ner_params(ignore_labels=[]))[0]["entities"]
    assert "O" in {e["entity_group"] for e in every}
    kept = outputs(runner, [doc], ner_params(ignore_labels=["O", "PER"]))[0]["entities"]
    assert kept == [e for e in every if e["entity_group"] not in ("O", "PER")]
    with pytest.raises(InvalidParams, match="aggregation_strategy"):
        ner_params(aggregation_strategy="longest")
    with pytest.raises(InvalidParams, match="stride 40 must be less than the 30 tokens"):
        runner.check(ner_params(stride=40))


# --- fill-mask ---------------------------------------------------------------------


def masked(texts: list[str], n: int = 8) -> list[str]:
    """Documents with one [MASK] a few words in."""
    found = []
    for text in mixed_lengths(texts, n):
        words = text[:300].split()
        words[min(3, len(words) - 1)] = "[MASK]"
        found.append(" ".join(words))
    return found


def test_fill_mask_tokens_equal_the_pipelines(runners, encoder_models, sample_texts):
    reference = pipe("fill-mask", encoder_models["mlm"])
    runner = runners["mlm"]["fill-mask"]
    docs = masked(sample_texts)
    for params in ({}, {"top_k": 3}, {"targets": ["the", "and", "python", "zzqx"]}):
        found = outputs(runner, docs, validate_params("fill-mask", params))
        for doc, ours in zip(docs, found, strict=True):
            theirs = plain(reference(doc, **params))
            same([{k: p[k] for k in p if k != "mask"} for p in ours["predictions"]], theirs)
            assert ours["token_str"] == theirs[0]["token_str"]
            assert ours["sequence"] == theirs[0]["sequence"]


def test_fill_mask_with_two_masks_gives_each_its_predictions(runners, encoder_models):
    reference = pipe("fill-mask", encoder_models["mlm"])
    doc = "the [MASK] module reads a [MASK] file"
    ours = outputs(runners["mlm"]["fill-mask"], [doc], validate_params("fill-mask", {}))[0]
    theirs = plain(reference(doc))
    assert len(theirs) == 2
    for mask, predictions in enumerate(theirs):
        mine = [
            {k: p[k] for k in p if k != "mask"} for p in ours["predictions"] if p["mask"] == mask
        ]
        same(mine, predictions)


def test_fill_mask_batched_equals_alone(runners, sample_texts):
    batched_and_alone(
        runners["mlm"]["fill-mask"], masked(sample_texts, 16), validate_params("fill-mask", {})
    )


def test_a_document_without_the_mask_token_is_an_error_naming_it(runners, sample_texts):
    runner = runners["mlm"]["fill-mask"]
    docs = ["no mask here", "a [MASK] here", "[MASK] " + "word " * 300, "word " * 300 + "[MASK]"]
    found = outputs(runner, docs, validate_params("fill-mask", {}))
    assert found[0] == "no mask token: fill-mask needs [MASK] in the text"
    assert isinstance(found[1], dict) and isinstance(found[2], dict)
    assert found[3] == "the mask token [MASK] is past the 128 tokens model mlm reads"
    with pytest.raises(InvalidParams, match="none of the targets"):
        runner.check(validate_params("fill-mask", {"targets": ["\u200b"]}))


# --- zero-shot by entailment -------------------------------------------------------


def zero_shot(labels: list[str] | dict[str, str], **given: Any) -> dict[str, Any]:
    return validate_params("classify", {"labels": labels, **given})


@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_label_order_and_scores_equal_the_pipelines(
    runners, encoder_models, sample_texts, multi_label
):
    reference = pipe("zero-shot-classification", encoder_models["nli"])
    runner = runners["nli"]["classify"]
    labels = ["python", "database", "network", "web"]
    template = "The topic is {}."
    book = " ".join(sample_texts)  # far past the prefix a premise is cut to
    assert len(book) > 16 * runner.loaded.max_length * 4
    docs = [*mixed_lengths(sample_texts, 6), book]
    params = zero_shot(labels, hypothesis_template=template, multi_label=multi_label)
    for doc, ours in zip(docs, outputs(runner, docs, params), strict=True):
        theirs = reference(
            doc, candidate_labels=labels, hypothesis_template=template, multi_label=multi_label
        )
        assert list(ours["scores"]) == theirs["labels"]
        same(list(ours["scores"].values()), theirs["scores"], 1e-5)
        assert ours["label"] == theirs["labels"][0]


def test_zero_shot_batched_equals_alone_and_the_head_still_classifies(runners, sample_texts):
    runner = runners["nli"]["classify"]
    docs = mixed_lengths(sample_texts, 12)
    batched_and_alone(runner, docs, zero_shot(["python", "database", "network"]))
    batched_and_alone(runner, docs, validate_params("classify", {}))
    head = outputs(runner, docs[:1], validate_params("classify", {}))[0]
    assert set(head["scores"]) == {"contradiction", "neutral", "entailment"}


def test_hypothesis_template_is_checked_and_defaults_leave_params_as_they_were():
    assert validate_params("classify", {"labels": ["a", "b"]}) == {"labels": {"a": "a", "b": "b"}}
    assert validate_params("classify", {"multi_label": True})["multi_label"] is True
    for bad in ("no slot", "{} and {}", "{0.__class__} {}", "{label}"):
        with pytest.raises(InvalidParams, match="hypothesis template"):
            validate_params("classify", {"labels": ["a", "b"], "hypothesis_template": bad})


def test_labels_on_a_classifier_with_its_own_head_are_refused_in_one_line(runners, tiny_classifier):
    classifier = runners_for(load_model("tiny", tiny_classifier, CPU), LIMITS)["classify"]
    with pytest.raises(InvalidParams) as refused:
        classifier.check(zero_shot(["a", "b"]))
    assert str(refused.value) == (
        "model tiny is a classifier with its own labels, neither an NLI model (an entailment "
        "label) nor an embedding model: zero-shot labels need one of those"
    )
    runners["nli"]["classify"].check(zero_shot(["a", "b"]))  # an NLI model takes them


# --- a masked-LM checkpoint: the task named decides ---------------------------------


def test_a_masked_lm_fills_masks_embeds_and_classifies_zero_shot(runners, sample_texts):
    served = runners["mlm"]
    assert list(served) == ["fill-mask", "classify", "embed"]
    vectors = outputs(served["embed"], sample_texts[:3], validate_params("embed", {}))
    assert {v["dim"] for v in vectors} == {32}
    batched_and_alone(served["embed"], mixed_lengths(sample_texts, 8), {})
    labelled = outputs(served["classify"], sample_texts[:2], zero_shot(["a", "b"]))
    assert set(labelled[0]["similarities"]) == {"a", "b"}


def test_a_hypothesis_with_no_room_for_the_document_is_refused_in_one_line(runners):
    """The tokenizer cannot cut the premise short enough for it: every document would
    fail alike with the tokenizer's own error."""
    runner = runners["nli"]["classify"]
    long_text = " ".join("abcdefghij" * 25)  # 250 one-letter words, within 500 characters
    assert runner.loaded.max_length < 250
    with pytest.raises(InvalidParams) as refused:
        runner.check(zero_shot({"short": "python", "long": long_text}))
    message = str(refused.value)
    assert message.startswith("zero-shot: the hypothesis for label 'long' is ")
    assert "shorten the label's text or hypothesis_template" in message
    runner.check(zero_shot({"short": "python", "other": "network"}))  # room enough
