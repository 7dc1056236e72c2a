"""What a user would write by hand, and docqueue's engine, measured in-process.

(a) ``pipeline()`` one document per call; (b) ``pipeline(batch_size=128)``, or the
Auto model in fixed batches of 128 in input order where transformers 5 has no
pipeline (summarization); a plain loop over length-sorted batches cut by the same
token budget as docqueue (the hand-written loop the engine must beat); (c) the
docqueue engine offline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from docqueue.config import Settings
from docqueue.params import validate_params
from docqueue.worker.models import LoadedModel
from docqueue.worker.offline import run_offline
from docqueue.worker.runners import Features, Runner, tokenized
from docqueue.worker.threads import set_cpu_threads

BATCH = 128


@dataclass
class Arm:
    """One measured way of running the documents."""

    key: str  # a, b, sorted, c, d, d-wall
    name: str
    docs: int
    seconds: float
    real_tokens: int
    padded_tokens: int | None = None
    new_tokens: int | None = None
    peak_gpu_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def docs_per_second(self) -> float:
        return self.docs / self.seconds if self.seconds else 0.0


def lengths(runner: Runner, docs: Sequence[str], params: dict[str, Any]) -> list[int]:
    return [f.length for f in tokenized(runner.preprocess(docs, params))]


def padded_in_order(token_lengths: Sequence[int], batch: int) -> int:
    return sum(
        len(chunk) * max(chunk)
        for chunk in (token_lengths[i : i + batch] for i in range(0, len(token_lengths), batch))
    )


def _timed(device: Any, work: Callable[[], Any]) -> tuple[float, int | None]:
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with torch.inference_mode():
        work()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return seconds, (int(torch.cuda.max_memory_allocated(device)) if cuda else None)


def generation_kwargs(task: str, params: dict[str, Any]) -> dict[str, Any]:
    if task == "classify":
        return {}
    return {
        "max_new_tokens": params["max_new_tokens"],
        "min_new_tokens": params["min_new_tokens"],
        "do_sample": False,
        "num_beams": 1,
    }


def pipeline_arm(
    loaded: LoadedModel, task: str, docs: Sequence[str], params: dict[str, Any], batch: int | None
) -> Arm:
    """(a) with ``batch=None``: one call per document; (b) ``batch_size=batch``."""
    from transformers import pipeline

    Kind = Literal[
        "text-classification",
        "text-generation",
        "token-classification",
        "fill-mask",
        "zero-shot-classification",
    ]
    kinds: dict[str, Kind] = {
        "classify": "text-classification",
        "generate": "text-generation",
        "ner": "token-classification",
        "fill-mask": "fill-mask",
    }
    kind = "zero-shot-classification" if params.get("labels") else kinds[task]
    tokenizer = loaded.tokenizer
    if task == "generate":
        tokenizer.padding_side = "left"
    pipe = pipeline(kind, model=loaded.model, tokenizer=tokenizer, device=loaded.device)
    call: dict[str, Any] = {"truncation": True, "max_length": loaded.max_length}
    if task == "generate":
        call = {**generation_kwargs(task, params), "return_full_text": False}
    elif kind == "zero-shot-classification":  # truncates each pair to the model's length
        call = {"candidate_labels": list(params["labels"].values())}
    elif task == "ner":  # the whole of each document, in windows, as docqueue reads it
        from docqueue.worker.runners.ner import default_stride

        specials = tokenizer.num_special_tokens_to_add(pair=False)
        stride = params.get("stride")
        call = {
            "aggregation_strategy": params["aggregation_strategy"],
            "stride": default_stride(loaded.max_length, specials) if stride is None else stride,
        }
    elif task == "fill-mask":
        call = {
            "top_k": params["top_k"],
            "tokenizer_kwargs": {"truncation": True, "max_length": loaded.max_length},
        }

    def work() -> None:
        if batch is None:
            for doc in docs:
                pipe(doc, **call)
        else:
            pipe(list(docs), batch_size=batch, **call)

    seconds, gpu = _timed(loaded.device, work)
    tokenizer.padding_side = "right"
    return Arm(
        key="a" if batch is None else "b",
        name="(a) pipeline(), one document per call"
        if batch is None
        else f"(b) pipeline(batch_size={batch})",
        docs=len(docs),
        seconds=seconds,
        real_tokens=0,
        peak_gpu_bytes=gpu,
    )


def fixed_batches_arm(
    runner: Runner,
    task: str,
    docs: Sequence[str],
    params: dict[str, Any],
    batch: int | None,
    sort: bool = False,
    budget: int | None = None,
    max_rows: int = 256,
) -> Arm:
    """The Auto model in fixed batches in input order (``batch``), one document at a
    time (``batch=1``), or -- with ``sort`` -- length-sorted batches cut by a token
    budget: the plain loop a careful user writes.  Tokenizing is part of the time."""
    ran: list[list[Features]] = []

    def work() -> None:
        features = tokenized(runner.preprocess(docs, params))
        if sort:
            ordered = sorted(features, key=lambda f: f.length)
            batches = _cut(runner, ordered, params, budget, max_rows)
        else:
            size = batch or 1
            batches = [features[i : i + size] for i in range(0, len(features), size)]
        for chunk in batches:
            runner.forward(runner.collate(chunk), params).cpu()  # a loop fetches each batch
        ran.extend(batches)

    seconds, gpu = _timed(runner.device, work)
    name = (
        "sorted batches, token budget (hand-written loop)"
        if sort
        else "(a) Auto model, one document at a time"
        if batch == 1
        else f"(b) Auto model, batches of {batch} in input order"
    )
    return Arm(
        key="sorted" if sort else "a" if batch == 1 else "b",
        name=name,
        docs=len(docs),
        seconds=seconds,
        real_tokens=0,
        padded_tokens=sum(len(c) * max(f.length for f in c) for c in ran),
        peak_gpu_bytes=gpu,
    )


def forward_only_arm(
    runner: Runner, docs: Sequence[str], params: dict[str, Any], max_rows: int = 256
) -> Arm:
    """The model alone: the sorted arm's batches, tokenized and collated before the
    clock starts, and only the forward passes timed: the ceiling for these batches
    (no scheduler sending them runs the model faster at this dtype), so (b)'s time
    over this one is about the most batching could gain over (b)."""
    features = tokenized(runner.preprocess(docs, params))
    ordered = sorted(features, key=lambda f: f.length)
    batches = [runner.collate(c) for c in _cut(runner, ordered, params, None, max_rows)]

    def work() -> None:
        for inputs in batches:
            runner.forward(inputs, params).cpu()

    seconds, gpu = _timed(runner.device, work)
    return Arm(
        key="forward",
        name="the model alone: sorted batches, model calls only (the ceiling)",
        docs=len(docs),
        seconds=seconds,
        real_tokens=0,
        padded_tokens=sum(int(b["input_ids"].numel()) for b in batches),
        peak_gpu_bytes=gpu,
    )


def _cut(
    runner: Runner,
    ordered: list[Features],
    params: dict[str, Any],
    budget: int | None,
    max_rows: int,
) -> list[list[Features]]:
    shape = runner.shape(params)
    limit = budget or shape.budget
    batches: list[list[Features]] = [[]]
    for features in ordered:
        trial = batches[-1] + [features]
        if batches[-1] and (
            len(trial) > min(max_rows, shape.max_rows)
            or shape.cost(len(trial), max(f.length for f in trial)) > limit
        ):
            batches.append([features])
        else:
            batches[-1] = trial
    return [b for b in batches if b]


def engine_arm(
    runner: Runner, task: str, docs: Sequence[str], params: dict[str, Any], settings: Settings
) -> Arm:
    """(c) docqueue's engine offline: intake, flush policy, compute and writer
    threads, no Redis and no SQL."""
    import torch

    device = runner.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    threads = torch.get_num_threads()
    set_cpu_threads(settings, [runner.loaded])  # as a worker would
    started = time.perf_counter()
    try:
        run = run_offline({"bench": {task: runner}}, "bench", task, docs, params, settings)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    failed = [r for r in run.rows if not r.ok]
    arm = Arm(
        key="c",
        name="(c) docqueue engine offline",
        docs=len(docs),
        seconds=seconds,
        real_tokens=0,
        padded_tokens=run.padded_tokens,
        peak_gpu_bytes=int(torch.cuda.max_memory_allocated(device))
        if device.type == "cuda"
        else None,
    )
    if failed:
        arm.notes.append(f"{len(failed)} documents failed: {failed[0].error}")
    return arm


def validated(task: str, params: dict[str, Any]) -> dict[str, Any]:
    return validate_params(task, params, max_new_tokens_cap=4096)
