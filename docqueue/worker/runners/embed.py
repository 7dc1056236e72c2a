"""Sentence embeddings (mean pooling, L2-normalized) and zero-shot classification
by similarity to label texts, on a bare encoder such as all-MiniLM-L6-v2."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from docqueue.params import InvalidParams
from docqueue.worker.runners.base import Features, Output, Runner, label_scores

#: Softmax temperature over cosine similarities for zero-shot label scores.
ZERO_SHOT_TEMPERATURE = 0.05


class EmbedRunner(Runner):
    task = "embed"

    def embed(self, inputs: dict[str, Any]) -> Any:
        import torch

        on_device = self.to_device(inputs)
        # A masked language model's encoder (the model itself for a bare encoder).
        hidden = self.model.base_model(**on_device).last_hidden_state.float()
        mask = on_device["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        return self.embed(inputs)

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        vectors = raw.numpy().astype("<f4")
        return [
            Output({"dim": int(v.shape[0]), "prompt_tokens": f.length}, embedding=v.tobytes())
            for v, f in zip(vectors, batch, strict=True)
        ]


class ZeroShotRunner(EmbedRunner):
    """``classify`` with ``labels`` on an embedding model."""

    task = "classify"

    #: Label sets whose embeddings are kept (least recently used ones are dropped).
    CACHED_LABEL_SETS = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._label_vectors: OrderedDict[tuple[tuple[str, str], ...], Any] = OrderedDict()

    def check(self, params: dict[str, Any]) -> None:
        if not params.get("labels"):
            raise InvalidParams(
                f"model {self.loaded.name} is an embedding model without a classification head; "
                "pass labels for zero-shot classification"
            )

    def labels_matrix(self, labels: dict[str, str]) -> Any:
        """Embeddings of the label texts, computed once per label set."""
        key = tuple(labels.items())
        if key in self._label_vectors:
            self._label_vectors.move_to_end(key)
        else:
            encoded = self.tokenize(list(labels.values()), self.loaded.max_length)
            inputs = self.collate([f for f in encoded if isinstance(f, Features)])
            self._label_vectors[key] = self.embed(inputs)
            if len(self._label_vectors) > self.CACHED_LABEL_SETS:
                self._label_vectors.popitem(last=False)
        return self._label_vectors[key]

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        similarity = self.embed(inputs) @ self.labels_matrix(params["labels"]).T
        return similarity

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        names = list(params["labels"])
        probabilities = (raw / ZERO_SHOT_TEMPERATURE).softmax(dim=-1).tolist()
        return [
            Output(
                {**label_scores(names, probs), "similarities": dict(zip(names, sims, strict=True))}
            )
            for sims, probs in zip(raw.tolist(), probabilities, strict=True)
        ]
