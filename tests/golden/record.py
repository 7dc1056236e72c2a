"""Golden outputs: what transformers 4's pipelines answered, recorded once, for the
tasks transformers 5 no longer pipelines (question answering).  docqueue's tests
compare against these, never against docqueue's own output.

Recorded on the tiny seeded models of :mod:`docqueue.testing` and real texts (the
packaged pydocs sample), with transformers 4 in an environment of its own::

    python -m venv /tmp/tf4
    /tmp/tf4/bin/pip install torch==2.13.0 "transformers<5"
    python tests/golden/record.py --python /tmp/tf4/bin/python

Run in docqueue's environment, it builds the models into a temporary directory
and runs itself under the transformers-4 python (``--record``) to ask the
pipelines, one document at a time, and writes ``transformers4.json`` here.  The
tokenizers it trained are kept here too (``qa-tokenizer.json``): a trained
WordPiece vocabulary numbers its tokens differently from one run to the next,
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
    qa = build_qa_model(models / "qa")
    return {"qa": digest(qa / "model.safetensors")}


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
    return {"transformers": transformers.__version__, "question_answering": runs}


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
            check=True,
        )
    recorded = json.loads(done.stdout)
    recorded["weights"] = weights
    RECORDED.write_text(json.dumps(recorded, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {RECORDED} (transformers {recorded['transformers']})")


if __name__ == "__main__":
    main()
