"""``translate``: greedy translations checked against what transformers 4's
translation pipeline wrote on the same models and texts (recorded once by
``tests/golden/record.py``): Marian with one pair and with ``>>xx<<`` targets,
M2M100 with forced target tokens, T5 with its prefixes; batched (documents bound
for different languages in one batch) equals alone; unknown language codes are
one error row each, naming the codes the model knows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from golden.record import (
    RECORDED,
    TRANSLATION_RUNS,
    build_translator_model,
    digest,
    sample_texts,
    translation_texts,
)
from test_encoder_tasks import outputs
from test_runners import CPU, LIMITS

from docqueue.params import InvalidParams
from docqueue.tasks.translate import TranslateParams
from docqueue.worker.models import load_model
from docqueue.worker.runners import runners_for
from docqueue.worker.runners.translate import TranslateRunner

pytest.importorskip("sentencepiece")  # Marian's and M2M100's tokenizers; the test extra has it


@pytest.fixture(scope="module")
def translators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each golden translator, its weights checked by digest."""
    weights = json.loads(RECORDED.read_text())["weights"]
    built = {}
    for name in sorted({name for name, _ in TRANSLATION_RUNS}):
        path = build_translator_model(name, tmp_path_factory.mktemp(name))
        assert digest(path / "model.safetensors") == weights[name], (
            f"the golden {name} model's weights changed: rerun tests/golden/record.py"
        )
        built[name] = str(path)
    return built


def runner_of(path: str) -> TranslateRunner:
    found = runners_for(load_model("tr", path, CPU), LIMITS)["translate"]
    assert isinstance(found, TranslateRunner)
    return found


def params_of(**given: Any) -> dict[str, Any]:
    return TranslateParams(max_new_tokens=16, **given).model_dump()


@pytest.mark.parametrize("run", range(len(TRANSLATION_RUNS)))
def test_translations_are_transformers_4s_batched_and_alone(translators, run):
    recorded = json.loads(RECORDED.read_text())["translation"][run]
    name, languages = TRANSLATION_RUNS[run]
    assert (recorded["model"], recorded["params"]) == (name, languages)
    runner = runner_of(translators[name])
    params = params_of(**languages)
    texts = translation_texts(sample_texts())
    batched = outputs(runner, texts, params)
    assert [o["translation_text"] for o in batched] == recorded["translations"]
    for text, found in zip(texts[:6], batched, strict=False):
        assert outputs(runner, [text], params)[0] == found
    for found in batched:
        assert found["completion_tokens"] <= 16 and found["finish_reason"] in ("stop", "length")


def test_documents_bound_for_different_languages_share_a_batch(translators):
    """Each document's own languages (the job's by default), forced per row."""
    recorded = json.loads(RECORDED.read_text())["translation"]
    french = next(r for r in recorded if r["model"] == "m2m100" and r["params"]["tgt_lang"] == "fr")
    german = next(r for r in recorded if r["model"] == "m2m100" and r["params"]["tgt_lang"] == "de")
    texts = translation_texts(sample_texts())
    docs: list[Any] = [
        text if i % 2 else {"text": text, "target_lang": "de"} for i, text in enumerate(texts)
    ]
    found = outputs(runner_of(translators["m2m100"]), docs, params_of(src_lang="en", tgt_lang="fr"))
    expected = [german if i % 2 == 0 else french for i in range(len(texts))]
    assert [f["translation_text"] for f in found] == [
        e["translations"][i] for i, e in enumerate(expected)
    ]


def test_unknown_languages_are_errors_naming_the_known_ones(translators):
    m2m = runner_of(translators["m2m100"])
    with pytest.raises(InvalidParams, match="knows no language 'xx'; it knows af, am, ar"):
        m2m.check(params_of(src_lang="en", tgt_lang="xx"))
    docs: list[Any] = [
        {"text": "hello", "target_lang": "zz"},
        "no source language",
        {"text": "hello", "source_lang": "en", "target_lang": "fr"},
    ]
    found = outputs(m2m, docs, params_of())
    assert found[0].startswith("model tr knows no language 'zz'; it knows af, am")
    assert found[1].startswith("model tr needs src_lang and tgt_lang")
    assert isinstance(found[2], dict)

    multi = outputs(runner_of(translators["marian-multi"]), ["hello"], params_of())
    assert multi == ["model tr needs tgt_lang: one of fr, de"]
    t5 = outputs(runner_of(translators["t5"]), ["hello"], params_of(src_lang="de", tgt_lang="en"))
    assert t5 == ["model tr translates en to de, en to fr, not de to en"]
    unnamed = outputs(runner_of(translators["t5"]), ["hello"], params_of())
    assert unnamed == ["model tr translates en to de, en to fr: name src_lang and tgt_lang"]
    # a side left out is whichever fits, when one pair does
    prefixed = runner_of(translators["t5"]).preprocess(["hello"], params_of(tgt_lang="fr"))
    alone = runner_of(translators["t5"]).preprocess(
        ["hello"], params_of(src_lang="en", tgt_lang="fr")
    )
    assert prefixed[0].ids == alone[0].ids  # type: ignore[union-attr]
    # a multi-target Marian's source is its own: any source code is taken
    assert isinstance(
        outputs(
            runner_of(translators["marian-multi"]), ["hi"], params_of(src_lang="en", tgt_lang="fr")
        )[0],
        dict,
    )


def test_annotate_translates_with_each_documents_languages(
    tmp_path: Path, translators: dict[str, str]
) -> None:
    from test_cli import docqueue, no_traceback

    recorded = json.loads(RECORDED.read_text())["translation"]
    german = next(
        r for r in recorded if r["model"] == "marian-multi" and r["params"]["tgt_lang"] == "de"
    )
    french = next(
        r for r in recorded if r["model"] == "marian-multi" and r["params"]["tgt_lang"] == "fr"
    )
    texts = translation_texts(sample_texts())[:3]
    lines = [
        {"id": "a", "text": texts[0]},
        {"id": "b", "text": {"text": texts[1], "target_lang": "fr"}},
        {"id": "c", "text": texts[2]},
        {"id": "d", "text": {"text": "hello", "target_lang": "es"}},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    done = docqueue(
        "annotate", "in.jsonl", "--task", "translation", "--model", translators["marian-multi"],
        "--param", "tgt_lang=de", "--param", "max_new_tokens=16", "--out", "out.jsonl",
        cwd=tmp_path,
    )  # fmt: skip
    no_traceback(done)
    assert done.returncode == 1, done.stderr  # one document failed
    assert "knows no language 'es'; it knows fr, de" in done.stderr
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done", "done", "done", "failed"]
    assert [r["translation_text"] for r in rows[:3]] == [
        german["translations"][0],
        french["translations"][1],
        german["translations"][2],
    ]


def test_beams_and_sources_per_document_and_a_tokenizer_left_as_it_was(translators):
    """Documents from different source languages into different targets, with beam
    search, batched as alone; the model's tokenizer (which summarize and decoding
    share) keeps its own source language."""
    loaded = load_model("tr", translators["m2m100"], CPU)
    runners = runners_for(loaded, LIMITS)
    runner = runners["translate"]
    before = loaded.tokenizer.src_lang
    texts = translation_texts(sample_texts())[:6]
    docs: list[Any] = [
        {"text": t, "source_lang": ("en", "de", "fr")[i % 3], "target_lang": ("fr", "de")[i % 2]}
        for i, t in enumerate(texts)
    ]
    params = params_of(num_beams=2)
    batched = outputs(runner, docs, params)
    for doc, found in zip(docs, batched, strict=True):
        assert outputs(runner, [doc], params)[0] == found
    assert loaded.tokenizer.src_lang == before == runners["summarize"].tokenizer.src_lang
    assert len({f["translation_text"] for f in batched}) > 1
