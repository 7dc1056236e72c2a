"""Golden outputs: what transformers 4's pipelines answered, recorded once, for the
tasks transformers 5 no longer pipelines (question answering, translation).  docqueue's tests
compare against these, never against docqueue's own output.

Recorded on the tiny seeded models of :mod:`docqueue.testing` and real texts (the
packaged pydocs sample), with transformers 4 in an environment of its own::

    python -m venv /tmp/tf4
    /tmp/tf4/bin/pip install torch==2.13.0 "transformers<5" sentencepiece
    python tests/golden/record.py --python /tmp/tf4/bin/python

Run in docqueue's environment, it builds the models into a temporary directory
and runs itself under the transformers-4 python (``--record``) to ask the
pipelines, one document at a time, and writes ``transformers4.json`` here.  The
tokenizers it trained are kept here too (``qa-tokenizer.json``, ``translators/``):
a trained vocabulary numbers its tokens differently from one run to the next,
while the seeded weights come out the same, byte for byte (their digest is
recorded, and the tests check it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

GOLDEN = Path(__file__).resolve().parent
ROOT = GOLDEN.parent.parent
SAMPLE = ROOT / "docqueue" / "bench" / "pydocs-sample.jsonl"
RECORDED = GOLDEN / "transformers4.json"
QA_TOKENIZER = GOLDEN / "qa-tokenizer.json"
#: The window of the golden question-answering model: most contexts are longer.
QA_WINDOW = 128
TRANSLATORS = GOLDEN / "translators"
#: The golden translators' window: every golden text fits it whole.
TRANSLATOR_WINDOW = 256
#: Tokens each golden translation may write.
NEW_TOKENS = 16
#: The golden translators: how each is built (``docqueue.testing``).
TRANSLATOR_KINDS: dict[str, dict[str, Any]] = {
    "marian": {"kind": "marian"},
    "marian-multi": {"kind": "marian", "targets": ("fr", "de")},
    "m2m100": {"kind": "m2m100"},
    "t5": {"kind": "t5"},
}
#: T5's prefixes, as its config declares them.
T5_PREFIXES = {
    ("en", "de"): "translate English to German: ",
    ("en", "fr"): "translate English to French: ",
}
#: Each recorded translation run: the model and the job's languages.
TRANSLATION_RUNS: list[tuple[str, dict[str, str]]] = [
    ("marian", {}),
    ("marian-multi", {"tgt_lang": "fr"}),
    ("marian-multi", {"tgt_lang": "de"}),
    ("m2m100", {"src_lang": "en", "tgt_lang": "fr"}),
    ("m2m100", {"src_lang": "en", "tgt_lang": "de"}),
    ("t5", {"src_lang": "en", "tgt_lang": "de"}),
    ("t5", {"src_lang": "en", "tgt_lang": "fr"}),
]

QUESTIONS = [
    "What does the csv module read?",
    "Which exception is raised when a key is missing?",
    "How do I open a file for writing?",
    "What is returned by the function?",
    "Which platforms are supported?",
    "What does the module provide?",
    "When was this behaviour changed?",
    "Why should the default be avoided?",
]

#: Parameters of each recorded run, and how many of the documents it covers.
QA_RUNS: list[tuple[dict[str, Any], int]] = [
    ({}, 36),
    ({"top_k": 3, "handle_impossible_answer": True}, 12),
    ({"max_answer_len": 4, "align_to_words": False}, 12),
    ({"max_seq_len": 48, "doc_stride": 16, "top_k": 2}, 12),
]
#: Contexts of a word or three, where "no answer" can win.
SHORT_CONTEXTS = ["Yes.", "In 1999.", "Never", "The csv module.", "No", "Python 3"]
SHORT_RUN: dict[str, Any] = {"handle_impossible_answer": True, "top_k": 2}


def sample_texts() -> list[str]:
    return [json.loads(line)["text"] for line in SAMPLE.read_text().splitlines()]


def qa_documents(texts: list[str]) -> list[dict[str, str]]:
    """36 questions with contexts of every length: a sentence, a paragraph, a whole
    page (past the window), three pages joined (many windows)."""
    docs = []
    for i in range(36):
        text = texts[i + 10]
        kind = i % 4
        if kind == 0:
            context = text[:200]
        elif kind == 1:
            context = text[:600]
        elif kind == 2:
            context = text
        else:
            context = "\n\n".join(texts[i : i + 3])
        docs.append({"question": QUESTIONS[i % len(QUESTIONS)], "context": context})
    return docs


def translation_texts(texts: list[str]) -> list[str]:
    """16 real texts of 60 to 300 characters."""
    return [t[: (60, 150, 300)[i % 3]] for i, t in enumerate(texts[40:56])]


def build_translator_model(name: str, path: Path) -> Path:
    """A golden translator (its tokenizer from ``translators/NAME``)."""
    from transformers import AutoTokenizer

    from docqueue.testing import build_seq2seq, build_translator

    saved = TRANSLATORS / name
    options = dict(TRANSLATOR_KINDS[name])
    if options["kind"] == "t5":
        return build_seq2seq(
            path,
            [],
            kind="t5",
            max_length=TRANSLATOR_WINDOW,
            translation_prefixes=T5_PREFIXES,
            spread=4.0,
            tokenizer=AutoTokenizer.from_pretrained(str(saved)),
        )
    return build_translator(path, max_length=TRANSLATOR_WINDOW, tokenizer_from=saved, **options)


def train_translator_tokenizers() -> None:
    """Train each golden translator's tokenizer anew, into ``translators/``."""
    import shutil

    from docqueue.testing import bpe_tokenizer, build_translator

    texts = sample_texts()
    for name, options in TRANSLATOR_KINDS.items():
        target = TRANSLATORS / name
        shutil.rmtree(target, ignore_errors=True)
        if options["kind"] == "t5":
            tokenizer = bpe_tokenizer(texts, 400, TRANSLATOR_WINDOW, bos=None, add_eos=True)
            tokenizer.save_pretrained(str(target))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            built = build_translator(Path(tmp), texts, max_length=TRANSLATOR_WINDOW, **options)
            target.mkdir(parents=True)
            for file in built.iterdir():
                if file.name not in ("model.safetensors", "config.json", "generation_config.json"):
                    shutil.copy(file, target / file.name)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qa_tokenizer() -> Any:
    """The golden model's tokenizer, as recorded."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(QA_TOKENIZER),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=QA_WINDOW,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def build_qa_model(path: Path) -> Path:
    """The golden question-answering model (needs ``qa-tokenizer.json``)."""
    from docqueue.testing import build_question_answerer

    return build_question_answerer(path, [], max_length=QA_WINDOW, tokenizer=qa_tokenizer())


def build(models: Path, new_tokenizer: bool) -> dict[str, str]:
    """Build the golden models into ``models``; their weights' digests."""
    from docqueue.testing import wordpiece_tokenizer

    if new_tokenizer or not QA_TOKENIZER.exists():
        trained = wordpiece_tokenizer(sample_texts(), 1000, QA_WINDOW)
        trained.backend_tokenizer.save(str(QA_TOKENIZER))
    if new_tokenizer or not TRANSLATORS.exists():
        train_translator_tokenizers()
    qa = build_qa_model(models / "qa")
    weights = {"qa": digest(qa / "model.safetensors")}
    for name in TRANSLATOR_KINDS:
        built = build_translator_model(name, models / name)
        weights[name] = digest(built / "model.safetensors")
    return weights


def record(models: Path) -> dict[str, Any]:
    """Under transformers 4: each run's answers, one document at a time."""
    import transformers
    from transformers import AutoModelForQuestionAnswering

    # transformers 4's pipeline(), which transformers 5's types do not know
    answerer = cast(Any, transformers).pipeline(
        "question-answering",
        model=AutoModelForQuestionAnswering.from_pretrained(models / "qa"),
        tokenizer=qa_tokenizer(),
        device=-1,
    )
    docs = qa_documents(sample_texts())
    runs = []
    for params, count in QA_RUNS:
        answers = []
        for doc in docs[:count]:
            found = answerer(question=doc["question"], context=doc["context"], **params)
            answers.append(found if isinstance(found, list) else [found])
        runs.append({"params": params, "answers": answers})
    short = [
        answerer(question=q, context=c, **SHORT_RUN)
        for q, c in zip(QUESTIONS, SHORT_CONTEXTS, strict=False)
    ]
    return {
        "transformers": transformers.__version__,
        "question_answering": runs,
        "question_answering_short": short,
        "translation": record_translations(models),
    }


def record_translations(models: Path) -> list[dict[str, Any]]:
    """Under transformers 4: each translation run's texts, greedy."""
    import transformers
    from transformers import (
        AutoModelForSeq2SeqLM,
        M2M100Tokenizer,
        MarianTokenizer,
        PreTrainedTokenizerFast,
    )

    texts = translation_texts(sample_texts())
    runs = []
    for name, languages in TRANSLATION_RUNS:
        model = AutoModelForSeq2SeqLM.from_pretrained(models / name)
        if TRANSLATOR_KINDS[name]["kind"] == "t5":
            tokenizer: Any = PreTrainedTokenizerFast(
                tokenizer_file=str(models / name / "tokenizer.json"),
                eos_token="</s>",
                pad_token="<pad>",
                unk_token="<unk>",
            )
        elif TRANSLATOR_KINDS[name]["kind"] == "m2m100":  # files, not v5's config
            # as a checkpoint's tokenizer_config.json lists them: language tokens special
            tokenizer = M2M100Tokenizer(
                str(models / name / "vocab.json"), str(models / name / "sentencepiece.bpe.model")
            )
            tokenizer = M2M100Tokenizer(
                str(models / name / "vocab.json"),
                str(models / name / "sentencepiece.bpe.model"),
                additional_special_tokens=[f"__{c}__" for c in tokenizer.lang_code_to_id],
            )
        else:
            spm = str(models / name / "source.spm")
            tokenizer = MarianTokenizer(spm, spm, str(models / name / "vocab.json"))
        pair = "_".join(
            ("translation", languages.get("src_lang", ""), "to", languages.get("tgt_lang", ""))
        )
        task = pair if TRANSLATOR_KINDS[name]["kind"] == "t5" else "translation"
        translator = cast(Any, transformers).pipeline(
            task, model=model, tokenizer=tokenizer, device=-1
        )
        generation = {"max_new_tokens": NEW_TOKENS, "num_beams": 1, "do_sample": False}
        outputs = []
        for text in texts:
            if name == "marian-multi":  # a multi-target Marian's user writes >>xx<<
                found = translator(f">>{languages['tgt_lang']}<< {text}", **generation)
            elif TRANSLATOR_KINDS[name]["kind"] == "m2m100":
                found = translator(text, **languages, **generation)
            else:
                found = translator(text, **generation)
            outputs.append(found[0]["translation_text"])
        runs.append({"model": name, "params": languages, "translations": outputs})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", help="a python with transformers 4 installed")
    parser.add_argument("--new-tokenizer", action="store_true", help="train the tokenizers anew")
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record:  # the transformers-4 side
        json.dump(record(args.record), sys.stdout)
        return
    if not args.python:
        parser.error("--python is needed")
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        weights = build(models, args.new_tokenizer)
        done = subprocess.run(
            [args.python, __file__, "--record", str(models)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(f"transformers 4's side failed:\n{done.stderr}")
    recorded = json.loads(done.stdout)
    recorded["weights"] = weights
    RECORDED.write_text(json.dumps(recorded, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {RECORDED} (transformers {recorded['transformers']})")


if __name__ == "__main__":
    main()
