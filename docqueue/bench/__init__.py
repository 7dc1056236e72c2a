"""``docqueue bench``: the same documents, side by side in one run, through

(a) HF ``pipeline()`` one document per call (at most 200 documents);
(b) ``pipeline(batch_size=128)``, or the Auto model in fixed batches of 128 in input
    order where transformers 5 has no pipeline (summarization, translation,
    reranking, question answering);
    a plain loop over length-sorted batches with docqueue's token budget (what a
    careful user writes by hand; the engine must beat it);
    the model alone, for the one-pass tasks: the same batches with their forward
    passes timed and nothing else (forward/b is the most any batching can gain over
    (b) at this dtype);
(c) docqueue's engine offline (no queue);
(d) docqueue end to end: enqueue -> Redis -> worker -> SQL.

It prints docs/s, real and padded tokens/s (new tokens/s for generation), latency
of single documents at a stated rate with and without a bulk job, peak memory,
and the ratios d/b and d/c.  Its numbers mean something at the default sizes, on
the machine whose numbers you want; tests/test_bench.py runs it on a few documents
only to check that every arm completes and reports.
"""

from __future__ import annotations

import gc
import json
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docqueue.bench import arms, endtoend, models
from docqueue.bench.arms import Arm
from docqueue.config import Settings
from docqueue.producer.client import Client
from docqueue.worker.budget import limits_for
from docqueue.worker.memory import peak_host_bytes
from docqueue.worker.models import load_model, pick_device
from docqueue.worker.runners import runners_for, tokenized

# 300 Python documentation documents, shipped in the package (package data), cycled
# when no --corpus is given.
DEFAULT_CORPUS = Path(__file__).resolve().parent / "pydocs-sample.jsonl"
NEW_TOKENS = {"summarize": 48, "generate": 64, "translate": 48}
#: Tasks transformers 5 has no pipeline for: their baselines are the Auto model in
#: plain loops.
NO_PIPELINE = ("summarize", "translate", "rerank", "answer")
MIXED_LENGTHS = (16, 32, 64, 128, 256)


@dataclass
class Options:
    task: str = "classify"
    device: str | None = None
    shape: str | None = None
    docs: int = 20_000
    baseline_docs: int | None = None
    corpus: Path | None = None
    rate: float = 20.0
    latency_count: int = 200
    latency_bulk: int = 50_000
    singles: int = 20_000
    skip: set[str] = field(default_factory=set)
    workdir: Path | None = None
    settings: Settings = field(default_factory=Settings)
    #: classify's zero-shot labels: an NLI model, against
    #: pipeline("zero-shot-classification").
    labels: list[str] | None = None

    @property
    def model_key(self) -> str:
        """Which model the run builds: the task's, or ``nli`` for zero-shot labels."""
        return "nli" if self.task == "classify" and self.labels else self.task


def load_corpus(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def fit(tokenizer: Any, text: str, tokens: int) -> str:
    """The text cut to at most ``tokens`` tokens (decoded back to text)."""
    ids = tokenizer(text)["input_ids"]
    return text if len(ids) <= tokens else tokenizer.decode(ids[: tokens - 8])


def with_mask(text: str, mask: str, at: int = 4) -> str:
    """The text with its ``at``-th word replaced by the mask token (fill-mask's
    documents: the mask within the first tokens, which every arm reads)."""
    words = text.split(" ")
    words[min(at, len(words) - 1)] = mask
    return " ".join(words)


def as_pair(text: str, words: int = 8) -> dict[str, str]:
    """rerank's documents: the text as a passage, its first ``words`` words as the
    query."""
    return {"query": " ".join(text.split()[:words]), "passage": text}


def as_question(text: str, words: int = 8) -> dict[str, str]:
    """answer's documents: the text as the context, its first ``words`` words as
    the question."""
    return {"question": " ".join(text.split()[:words]) + "?", "context": text}


def cycle(texts: list[Any], n: int) -> list[Any]:
    return [texts[i % len(texts)] for i in range(n)]


def run(options: Options, say: Callable[[str], None] = print) -> None:
    import torch

    device = pick_device(options.device)
    key = options.model_key
    shape = options.shape or (
        "minilm"
        if key in models.ENCODER_KEYS
        else "standard"
        if device.type == "cuda" and options.task != "translate"
        else "micro"
        if options.task == "classify"
        else "tiny"
    )
    corpus_path = options.corpus or DEFAULT_CORPUS
    corpus = load_corpus(corpus_path)
    docs = cycle(corpus, options.docs)
    generative = options.task in NEW_TOKENS
    baseline_n = options.baseline_docs or (min(options.docs, 4096) if generative else options.docs)
    baseline_docs = docs[:baseline_n]
    raw_params: dict[str, Any] = (
        {"max_new_tokens": NEW_TOKENS[options.task], "min_new_tokens": NEW_TOKENS[options.task]}
        if generative
        else {"labels": options.labels}
        if options.labels
        else {}
    )
    params = arms.validated(options.task, raw_params)
    settings = options.settings.model_copy(update={"device": str(device)})
    workdir = options.workdir or Path(tempfile.gettempdir()) / "docqueue-bench"
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = models.build(shape, key, workdir, corpus)

    loaded = load_model(endtoend.MODEL, str(model_dir), settings)
    runner = runners_for(loaded, limits_for(settings, loaded))[options.task]
    if options.task == "generate":
        # Prompts must leave room for the new tokens in the model's context, or a
        # plain pipeline() loop fails on the long ones.
        room = loaded.max_length - params["max_new_tokens"]
        corpus = [fit(loaded.tokenizer, text, room) for text in corpus]
        docs = cycle(corpus, options.docs)
        baseline_docs = docs[:baseline_n]
    if options.task == "fill-mask":
        corpus = [with_mask(text, loaded.tokenizer.mask_token) for text in corpus]
        docs = cycle(corpus, options.docs)
        baseline_docs = docs[:baseline_n]
    if options.task in ("rerank", "answer"):
        shaped = as_pair if options.task == "rerank" else as_question
        docs = cycle([shaped(text) for text in corpus], options.docs)
        baseline_docs = docs[:baseline_n]
    token_lengths = arms.lengths(runner, docs, params)
    mean_tokens = sum(token_lengths) / len(token_lengths)
    say(
        _header(
            options, shape, device, corpus_path, len(corpus), mean_tokens, settings, runner, params
        )
    )

    results: list[Arm] = []

    def record(arm: Arm, n: int) -> None:
        arm.real_tokens = sum(token_lengths[:n])
        if generative:
            arm.new_tokens = n * params["max_new_tokens"]
        results.append(arm)
        say(_row(arm, generative))

    say(_table_head(generative))
    a_docs = docs[: min(200, baseline_n)]
    no_pipeline = options.task in NO_PIPELINE
    if "a" not in options.skip:
        if no_pipeline:
            record(arms.fixed_batches_arm(runner, options.task, a_docs, params, 1), len(a_docs))
        else:
            record(arms.pipeline_arm(loaded, options.task, a_docs, params, None), len(a_docs))
    if "b" not in options.skip:
        if no_pipeline:
            b = arms.fixed_batches_arm(runner, options.task, baseline_docs, params, arms.BATCH)
        else:
            b = arms.pipeline_arm(loaded, options.task, baseline_docs, params, arms.BATCH)
            if options.task != "ner" and not options.labels:  # one row per document
                b.padded_tokens = arms.padded_in_order(token_lengths[:baseline_n], arms.BATCH)
        record(b, baseline_n)
    if "sorted" not in options.skip:
        record(
            arms.fixed_batches_arm(
                runner,
                options.task,
                baseline_docs,
                params,
                None,
                sort=True,
                max_rows=settings.max_batch_rows,
            ),
            baseline_n,
        )
    # Generation's engine decodes its own way (rows leave a batch as they end), so
    # one call per sorted batch bounds nothing there.
    if "forward" not in options.skip and not generative:
        record(
            arms.forward_only_arm(runner, baseline_docs, params, settings.max_batch_rows),
            baseline_n,
        )
    if "c" not in options.skip:
        record(arms.engine_arm(runner, options.task, baseline_docs, params, settings), baseline_n)
    in_process_peak = peak_host_bytes()

    del runner, loaded
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    with (
        tempfile.TemporaryDirectory(prefix="docqueue-bench-") as tmp,
        endtoend.services(settings, Path(tmp)) as live,
    ):
        client = Client(live)
        worker = endtoend.start_worker(live, model_dir, str(device), Path(tmp), "worker")
        try:
            if "d" not in options.skip:
                steady, wall = endtoend.bulk(
                    client, worker, options.task, docs, params, timeout=7200
                )
                record(steady, len(docs))
                record(wall, len(docs))
            state = endtoend.worker_state(client, worker)
            say("")
            say(_ratios(results))
            say(
                f"peak host memory: bench process (arms a-c) {_mib(in_process_peak)}; worker "
                f"{_mib(state.peak_host_bytes) if state else 'n/a'}"
            )
            if "latency" not in options.skip:
                worker.wait_ready(600)
                idle = endtoend.latency(
                    client, options.task, corpus, params, options.rate, options.latency_count
                )
                say(
                    f"latency, single documents, max_wait_ms={settings.max_wait_ms:g}, "
                    f"worker otherwise idle: {idle.describe()}"
                )
                worker.stop(60)  # the bulk job is queued first, for a fresh worker
                busy, pending = endtoend.latency_during_bulk(
                    client,
                    lambda: endtoend.start_worker(live, model_dir, str(device), Path(tmp), "w2"),
                    options.task,
                    corpus,
                    options.latency_bulk,
                    params,
                    options.rate,
                    options.latency_count,
                )
                say(
                    f"latency while a {options.latency_bulk:,}-document bulk job runs: "
                    f"{busy.describe()}; {pending:,} bulk documents still pending at the end"
                )
        finally:
            worker.stop(60)
        if options.task == "classify" and "singles" not in options.skip:
            _singles(
                client, live, model_dir, device, options, corpus, params, results, say, Path(tmp)
            )
        if options.task == "generate" and "mixed" not in options.skip:
            _mixed(client, live, model_dir, device, corpus, options, say, Path(tmp))
        client.close()
        if worker.log_path:
            shutil.copy(worker.log_path, workdir / "last-worker.log")


def _singles(
    client: Client,
    live: Settings,
    model_dir: Path,
    device: Any,
    options: Options,
    corpus: list[str],
    params: dict[str, Any],
    results: list[Arm],
    say: Callable[[str], None],
    tmp: Path,
) -> None:
    """Single-document messages, one per document as a backend sends them, queued
    first, then drained by one worker."""
    singles = cycle(corpus, options.singles)
    producer_us = endtoend.prequeue_singles(client, options.task, singles, params)
    worker = endtoend.start_worker(live, model_dir, str(device), tmp, "singles")
    try:
        rate = endtoend.drain(client, worker, len(singles), timeout=3600)
    finally:
        worker.stop(60)
    if rate != rate:  # NaN: drained before the first sample
        say(
            f"single-document messages ({len(singles):,} queued first): too few to measure "
            f"a steady rate; ask for more with --singles"
        )
        return
    engine = next((a for a in results if a.key == "c"), None)
    plumbing = ""
    if engine:
        plumbing = (
            f"; plumbing {1e6 / rate - 1e6 / engine.docs_per_second:,.0f} µs per "
            f"document over the engine offline"
        )
    say(
        f"single-document messages ({len(singles):,} queued first, one document each): "
        f"{rate:,.0f} docs/s into one worker{plumbing}; the producer spent "
        f"{producer_us:,.0f} µs per message"
    )


def _mixed(
    client: Client,
    live: Settings,
    model_dir: Path,
    device: Any,
    corpus: list[str],
    options: Options,
    say: Callable[[str], None],
    tmp: Path,
) -> None:
    """Generation with mixed output lengths: static batches of 512 in input order (each
    pays for its longest member) against docqueue, which batches equal lengths."""
    rng = random.Random(0)
    n = min(options.baseline_docs or 4096, options.docs)
    prompts = cycle(corpus, n)
    wanted = [rng.choice(MIXED_LENGTHS) for _ in prompts]
    useful = sum(wanted)
    settings = live
    loaded = load_model("bench", str(model_dir), settings)
    runner = runners_for(loaded, limits_for(settings, loaded))["generate"]
    started = time.perf_counter()
    import torch

    with torch.inference_mode():
        for start in range(0, n, 512):
            chunk = prompts[start : start + 512]
            longest = max(wanted[start : start + 512])
            p = arms.validated("generate", {"max_new_tokens": longest, "min_new_tokens": longest})
            runner.forward(runner.collate(tokenized(runner.preprocess(chunk, p))), p).cpu()
    static = time.perf_counter() - started
    del runner, loaded
    gc.collect()
    worker = endtoend.start_worker(live, model_dir, str(device), tmp, "mixed")
    try:
        worker.wait_ready(600)
        started = time.perf_counter()
        jobs = []
        for length in MIXED_LENGTHS:
            mine = [p for p, w in zip(prompts, wanted, strict=True) if w == length]
            jobs.append(
                client.submit_many(
                    mine,
                    task="generate",
                    model=endtoend.MODEL,
                    params={"max_new_tokens": length, "min_new_tokens": length},
                )
            )
        for job in jobs:
            job.wait(timeout=7200)
        queued = time.perf_counter() - started
    finally:
        worker.stop(60)
    say(
        f"generation, output lengths mixed {MIXED_LENGTHS[0]}-{MIXED_LENGTHS[-1]} ({n:,} "
        f"prompts, {useful:,} useful new tokens): static batches of 512 in input order "
        f"{useful / static:,.0f} useful tok/s; docqueue end to end {useful / queued:,.0f} "
        f"useful tok/s ({static / queued:.2f}x)"
    )


# --- printing ----------------------------------------------------------------------


def _header(
    options: Options,
    shape: str,
    device: Any,
    corpus: Path,
    corpus_docs: int,
    mean_tokens: float,
    settings: Settings,
    runner: Any,
    params: dict[str, Any],
) -> str:
    import torch
    import transformers

    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = (
            f"CPU, {torch.get_num_threads()} torch threads, {platform.processor() or 'x86_64'}"
        )
    budget = runner.shape(params).budget
    return (
        f"docqueue bench: {options.task}, {models.describe(shape, options.model_key)}\n"
        f"device: {device} ({hardware}); torch {torch.__version__}, transformers "
        f"{transformers.__version__}; {time.strftime('%Y-%m-%d')}\n"
        f"documents: {options.docs:,} from {corpus.name} ({corpus_docs:,} distinct, cycled), "
        f"{mean_tokens:.0f} tokens each on average after truncation\n"
        f"docqueue settings: token budget {budget:,}, max rows {settings.max_batch_rows}, "
        f"max_wait_ms {settings.max_wait_ms:g}, chunk {settings.chunk_size}, params {params}\n"
    )


def _table_head(generative: bool) -> str:
    third = "new tok/s" if generative else "padded tok/s"
    return (
        f"| arm | docs | seconds | docs/s | real tok/s | {third} | peak GPU MiB |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )


def _row(arm: Arm, generative: bool) -> str:
    per_s = 1 / arm.seconds if arm.seconds else 0
    third = arm.new_tokens if generative else arm.padded_tokens
    third_text = f"{third * per_s:,.0f}" if third is not None else "n/a"
    return (
        f"| {arm.name} | {arm.docs:,} | {_seconds(arm.seconds)} | {arm.docs_per_second:,.1f} | "
        f"{arm.real_tokens * per_s:,.0f} | {third_text} | {_mib(arm.peak_gpu_bytes)} |"
        + (f" {'; '.join(arm.notes)}" if arm.notes else "")
    )


def _seconds(value: float) -> str:
    """Two decimals, or six below a tenth of a second (the model alone on a few
    tiny documents takes milliseconds)."""
    return f"{value:,.2f}" if value >= 0.1 else f"{value:.6f}"


def _ratios(results: list[Arm]) -> str:
    rate = {a.key: a.docs_per_second for a in results}
    parts = []
    pairs = (("d", "b"), ("d", "c"), ("c", "b"), ("c", "sorted"), ("b", "a"), ("forward", "b"))
    for top, bottom in pairs:
        if top in rate and bottom in rate:
            parts.append(f"{top}/{bottom} = {rate[top] / rate[bottom]:.2f}")
    return "ratios (docs/s, same run): " + ", ".join(parts)


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f}"
