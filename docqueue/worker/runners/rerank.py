"""A cross-encoder's score for a query and a passage read together: the pair
tokenized as the model was trained on it (``[CLS] query [SEP] passage [SEP]``, with
token types where the model takes them), cut to its window longest side first, and
the sigmoid of its one logit, as sentence-transformers' ``CrossEncoder`` scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from docqueue.params import InvalidParams
from docqueue.protocol import Document
from docqueue.worker.runners.base import Features, Output, Rows, Runner, collate_rows


class CrossEncoderRunner(Runner):
    task = "rerank"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.with_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())

    def preprocess(self, docs: Sequence[Document], params: dict[str, Any]) -> list[Features | str]:
        queries, passages = [], []
        for doc in docs:
            if not isinstance(doc, dict):  # refused at intake: rerank takes no text
                raise InvalidParams("rerank takes a query and a passage, not text")
            queries.append(doc["query"])
            passages.append(doc["passage"])
        read_queries, read_passages = self.readable(queries), self.readable(passages)
        encoded = self.tokenizer(
            read_queries,
            read_passages,
            truncation=True,
            max_length=self.loaded.max_length,
            return_attention_mask=False,
            return_token_type_ids=self.with_types,
        )
        found: list[Features | str] = []
        for i, enc in enumerate(encoded.encodings):
            cut = bool(enc.overflowing) or (read_queries[i], read_passages[i]) != (
                queries[i],
                passages[i],
            )
            types = [encoded["token_type_ids"][i]] if self.with_types else None
            found.append(Rows([], truncated=cut, rows=[encoded["input_ids"][i]], types=types))
        return found

    def collate(self, batch: Sequence[Features]) -> dict[str, Any]:
        return collate_rows([_rows(f) for f in batch], self.tokenizer.pad_token_id)

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        logits = self.model(**self.to_device(inputs)).logits
        return logits.float()[:, 0].sigmoid()

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        return [
            Output({"score": score, "prompt_tokens": f.length})
            for score, f in zip(raw.tolist(), batch, strict=True)
        ]


def _rows(features: Features) -> Rows:
    if not isinstance(features, Rows):
        raise TypeError("rerank runs pairs its own preprocess tokenized")
    return features
