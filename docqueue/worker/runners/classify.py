"""Text classification with a sequence-classification head (BERT, DistilBERT, RoBERTa)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from docqueue.params import InvalidParams
from docqueue.tasks import declared
from docqueue.worker.runners.base import Features, Output, Runner, label_scores


class ClassifyRunner(Runner):
    task = "classify"

    def check(self, params: dict[str, Any]) -> None:
        refused = declared(self.task).refusal(self.loaded.family, params, self.loaded.name)
        if refused:
            raise InvalidParams(refused)

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        logits = self.model(**self.to_device(inputs)).logits
        if getattr(self.model.config, "problem_type", None) == "multi_label_classification":
            scores = logits.float().sigmoid()
        else:
            scores = logits.float().softmax(dim=-1)
        return scores

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        id2label = self.model.config.id2label
        names = [str(id2label.get(i, f"LABEL_{i}")) for i in range(raw.shape[1])]
        return [Output(label_scores(names, row)) for row in raw.tolist()]
