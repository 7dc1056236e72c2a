"""Zero-shot classification by entailment, on a sequence classifier trained on NLI:
each document is the premise of one hypothesis per label (the label's text put in
the hypothesis template), and the model's entailment logits become the labels'
scores, as ``pipeline("zero-shot-classification")`` computes them.  Without labels
the model classifies with its own head, as any classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from docqueue.params import InvalidParams
from docqueue.protocol import Document
from docqueue.tasks.classify import HYPOTHESIS_TEMPLATE
from docqueue.worker.models import entailment_id
from docqueue.worker.runners.base import Features, Output, Rows, collate_rows
from docqueue.worker.runners.classify import ClassifyRunner


class NliRunner(ClassifyRunner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        found = entailment_id(self.model.config)
        if found is None:
            raise ValueError(f"model {self.loaded.name} has no entailment label")
        self.entailment = found
        # The pipeline's choice: contradiction is the first class, or the last when
        # entailment is the first.
        self.contradiction = self.model.config.num_labels - 1 if found == 0 else 0
        self.with_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())

    def check(self, params: dict[str, Any]) -> None:
        """Also refuse hypotheses that leave no room for a document in the model's
        window (the tokenizer cannot cut the premise short enough, and every
        document would fail alike)."""
        super().check(params)
        labels = params.get("labels")
        if not labels:
            return
        room = self.loaded.max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - 1
        lengths = self.tokenizer(hypotheses(params), add_special_tokens=False)["input_ids"]
        for label, ids in zip(labels, lengths, strict=True):
            if len(ids) > room:
                raise InvalidParams(
                    f"zero-shot: the hypothesis for label {label!r} is {len(ids)} tokens, "
                    f"too long for model {self.loaded.name}, which reads "
                    f"{self.loaded.max_length} with the document: shorten the label's text "
                    "or hypothesis_template"
                )

    def preprocess(self, docs: Sequence[Document], params: dict[str, Any]) -> list[Features | str]:
        if not params.get("labels"):
            return super().preprocess(docs, params)
        texts = []
        for doc in docs:
            if not isinstance(doc, str):
                raise InvalidParams("classify takes text, not chat messages")
            texts.append(doc)
        premises = self.readable(texts)
        labels = hypotheses(params)
        n = len(labels)
        encoded = self.tokenizer(  # every document with every hypothesis, in one call
            [p for p in premises for _ in labels],
            labels * len(premises),
            truncation="only_first",
            max_length=self.loaded.max_length,
            return_attention_mask=False,
            return_token_type_ids=self.with_types,
        )
        found: list[Features | str] = []
        for d, text in enumerate(texts):
            pairs = slice(d * n, (d + 1) * n)
            truncated = len(premises[d]) < len(text) or any(
                enc.overflowing for enc in encoded.encodings[pairs]
            )
            types = encoded["token_type_ids"][pairs] if self.with_types else None
            found.append(
                Rows([], truncated=truncated, rows=encoded["input_ids"][pairs], types=types)
            )
        return found

    def collate(self, batch: Sequence[Features]) -> dict[str, Any]:
        if batch and isinstance(batch[0], Rows):
            return collate_rows([f for f in batch if isinstance(f, Rows)], self.pad_id)
        return super().collate(batch)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        if not params.get("labels"):
            return super().forward(inputs, params)
        return self.by_rows(inputs, self._logits)

    def _logits(self, inputs: dict[str, Any]) -> Any:
        return self.model(**self.to_device(inputs)).logits.float()

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        labels = params.get("labels")
        if not labels:
            return super().postprocess(raw, batch, params)
        names = list(labels)
        n = len(names)
        logits = raw.reshape(len(batch), n, -1)
        if params.get("multi_label"):
            pair = logits[..., [self.contradiction, self.entailment]].softmax(dim=-1)
            scores = pair[..., 1]
        else:
            scores = logits[..., self.entailment].softmax(dim=-1)
        outputs = []
        for row in scores.tolist():
            ranked = sorted(range(n), key=row.__getitem__, reverse=True)
            best = ranked[0]
            outputs.append(
                Output(
                    {
                        "label": names[best],
                        "score": row[best],
                        "scores": {names[i]: row[i] for i in ranked},
                    }
                )
            )
        return outputs


def hypotheses(params: dict[str, Any]) -> list[str]:
    """One hypothesis per label: its text in the template."""
    template = params.get("hypothesis_template") or HYPOTHESIS_TEMPLATE
    return [template.replace("{}", text) for text in params["labels"].values()]
