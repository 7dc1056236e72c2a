"""Runner plug-ins that misbehave on purpose, loaded by worker processes through the
``DOCQUEUE_RUNNERS`` setting (the tests put this directory on their PYTHONPATH)."""

from __future__ import annotations

import time
from typing import Any

import torch

from docqueue.worker.runners.base import Features
from docqueue.worker.runners.classify import ClassifyRunner

#: Batches of more rows than this "run out of GPU memory".
OOM_ABOVE_ROWS = 8


class PoisonClassifier(ClassifyRunner):
    """Raises, as a model might, on any batch holding a document with the word POISON."""

    def preprocess(self, docs, params):
        features = super().preprocess(docs, params)
        for feature, doc in zip(features, docs, strict=True):
            if isinstance(feature, Features):
                feature.extra["poison"] = "POISON" in doc
        return features

    def collate(self, batch):
        inputs = super().collate(batch)
        inputs["poison"] = any(f.extra["poison"] for f in batch)
        return inputs

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        if inputs.pop("poison"):
            raise ValueError("the model cannot digest this document")
        return super().forward(inputs, params)


class OutOfMemoryAbove(ClassifyRunner):
    """Raises torch's out-of-memory error for batches above OOM_ABOVE_ROWS rows."""

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        rows = inputs["input_ids"].shape[0]
        if rows > OOM_ABOVE_ROWS:
            raise torch.OutOfMemoryError(f"simulated: {rows} rows do not fit")
        return super().forward(inputs, params)


class SlowClassifier(ClassifyRunner):
    """Takes half a second per batch (to catch a worker in the middle of one)."""

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        time.sleep(0.5)
        return super().forward(inputs, params)


class PacedClassifier(ClassifyRunner):
    """Takes at least 0.15 s per batch: however quiet the machine, a worker's rate stays
    below 64 / 0.15 = 427 documents a second, so that a big job lasts long enough for a
    drill to restart Redis or cut a link under it."""

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        time.sleep(0.15)
        return super().forward(inputs, params)
